"""Reading and writing checkpoint directories of safetensors files.

A directory holds either one `*.safetensors` file or shards listed in a
`*.safetensors.index.json`. Pickle formats (`.bin`, `.pt`, `.pth`, `.ckpt`) are
refused with a hint; nothing here unpickles. Writes go to a temp dir and are
renamed into place (`io_utils.atomic_directory`), so a failed export leaves nothing half-written.
"""

import json
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def _pickle_error(path: Path) -> ValueError:
  return ValueError(
      f"{path} is a pickle checkpoint; planx_jax reads safetensors only. Convert it first, e.g. "
      "`AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True)`."
  )


class SafetensorsReader:
  """Lazy access to the tensors of a safetensors checkpoint directory (or file)."""

  def __init__(self, path: str | os.PathLike, exclude: tuple[str, ...] = ()):
    """`exclude`: file names in the directory that are not part of this checkpoint."""
    path = Path(path)
    if not path.exists():
      raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if path.is_file():
      if path.suffix in PICKLE_SUFFIXES:
        raise _pickle_error(path)
      files = [path]
    else:
      indexes = sorted(path.glob("*.safetensors.index.json"))
      files = sorted(f for f in path.glob("*.safetensors") if f.name not in exclude)
      if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
          if not f.exists():
            raise FileNotFoundError(f"shard {f.name} listed in {indexes[0].name} is missing from {path}")
      if not files:
        pickles = [p for p in sorted(path.iterdir()) if p.suffix in PICKLE_SUFFIXES]
        if pickles:
          raise _pickle_error(pickles[0])
        raise FileNotFoundError(f"no *.safetensors file in {path}")
    self.path = path
    self._where: dict[str, Path] = {}
    self._metadata: dict[str, str] = {}
    for f in files:
      with safe_open(f, framework="numpy") as handle:
        self._metadata.update(handle.metadata() or {})
        for key in handle.keys():
          self._where[key] = f

  def keys(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    with safe_open(self._where[key], framework="numpy") as handle:
      return tuple(handle.get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    with safe_open(self._where[key], framework="numpy") as handle:
      return handle.get_tensor(key)

  def items(self) -> Iterator[tuple[str, np.ndarray]]:
    by_file: dict[Path, list[str]] = {}
    for key, f in self._where.items():
      by_file.setdefault(f, []).append(key)
    for f, keys in by_file.items():
      with safe_open(f, framework="numpy") as handle:
        for key in keys:
          yield key, handle.get_tensor(key)


def write_safetensors(tensors: Mapping[str, np.ndarray], directory: Path, *,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, prefix: str = "model") -> None:
  """Writes `tensors` into `directory` as one file or as shards plus an index (HF layout)."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key, value in tensors.items():
    nbytes = value.nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = np.ascontiguousarray(value)
    size += nbytes
  metadata = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], str(directory / f"{prefix}.safetensors"), metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / name), metadata=metadata)
    weight_map.update({key: name for key in shard})
  total = sum(v.nbytes for v in tensors.values())
  index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
  (directory / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
