"""A TFDS dataset of Plan-X training records in ArrayRecord files: built from a manifest or in-memory records.

Validates every record before anything is written, builds in a temp dir and renames, and reads back a random-access
source; it needs no TensorFlow, and it does not shuffle, batch or tokenize (see `pipeline`).
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from planx_jax.data.records import FIELDS, TEXT_FIELDS, Record, RecordShapes, check_codebook_size, check_record
from planx_jax.io_utils import atomic_directory

DATASET_NAME = "planx_records"
MANIFEST_ARRAY_FIELDS = ("codes_s0", "codes_s2", "latents", "text_emb")
MANIFEST_KEYS = ("key", "image_description", "video_prompt", "has_first_frame") + MANIFEST_ARRAY_FIELDS


def record_features(shapes: RecordShapes) -> tfds.features.FeaturesDict:
  """The TFDS features of one record (raw little-endian tensors, UTF-8 texts)."""
  features: dict[str, Any] = {name: tfds.features.Text() for name in TEXT_FIELDS}
  for name, (shape, dtype) in shapes.array_specs().items():
    if shape:
      features[name] = tfds.features.Tensor(shape=shape, dtype=dtype)
    else:
      features[name] = tfds.features.Scalar(dtype=dtype)
  return tfds.features.FeaturesDict(features)


class PlanxRecords(tfds.core.GeneratorBasedBuilder):
  """Writes one split of checked records, in the given order (shuffling is the pipeline's job)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Plan-X training records (issue 7 schema)."}
  # No source file to look for a download-checksums file next to: the builder downloads nothing (and
  # TFDS's search for that file needs the optional importlib_resources package for installed modules).
  code_path = None

  def __init__(self, *, shapes: RecordShapes, codebook_size: int, split: str,
               examples: Callable[[], Iterator[tuple[str, Record]]], **kwargs):
    self._shapes = shapes
    self._codebook_size = codebook_size
    self._split = split
    self._examples = examples
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Plan-X training records: texts, TA-Tok keyframe codes, Wan VAE latents, umT5 states.",
        features=record_features(self._shapes),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(shapes=self._shapes.to_dict(), codebook_size=self._codebook_size),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self._split: self._generate_examples()}

  def _generate_examples(self):
    yield from self._examples()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  seen: dict[str, Any] = {}
  for key, value in pairs:
    if key in seen:
      raise ValueError(f"duplicate key {key!r}")
    seen[key] = value
  return seen


def _resolve(where: str, name: str, value, root: str) -> str:
  if not isinstance(value, str) or not value:
    raise ValueError(f"{where}: {name} must be a relative path to a .npy file, got {value!r}")
  if os.path.isabs(value):
    raise ValueError(f"{where}: {name} path {value!r} is absolute; paths must be relative to the data root {root!r}")
  path = os.path.realpath(os.path.join(root, value))
  if os.path.commonpath([path, root]) != root:
    raise ValueError(f"{where}: {name} path {value!r} resolves to {path!r}, outside the data root {root!r}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: {name} file {path!r} does not exist")
  return path


def _check_entry(where: str, entry) -> None:
  if not isinstance(entry, dict):
    raise ValueError(f"{where}: a manifest line must be a JSON object, got {type(entry).__name__}")
  unknown = sorted(k for k in entry if k not in MANIFEST_KEYS)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; a manifest line has {list(MANIFEST_KEYS)}")
  required = [k for k in MANIFEST_KEYS if k != "codes_s0" or entry.get("has_first_frame") is not False]
  missing = [k for k in required if k not in entry]
  if missing:
    raise ValueError(f"{where}: missing keys {missing} (codes_s0 may be omitted only when has_first_frame is false)")
  if not isinstance(entry["key"], str) or not entry["key"]:
    raise ValueError(f"{where}: key must be a non-empty string, got {entry['key']!r}")
  if not isinstance(entry["has_first_frame"], bool):
    raise ValueError(f"{where}: has_first_frame must be true or false, got {entry['has_first_frame']!r}")


def read_manifest(manifest: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
  """Parses a JSON-lines manifest into entries whose array fields are absolute paths inside the data root.

  A line is `{"key": str (unique), "image_description": str, "video_prompt": str, "has_first_frame": bool,
  "codes_s0": path, "codes_s2": path, "latents": path, "text_emb": path}`; paths are relative to
  `data_root` (default: the manifest's directory) and must stay inside it; `codes_s0` may be omitted
  when `has_first_frame` is false (zeros). Blank lines are skipped. Checks keys and paths, not contents;
  each entry also gets `where` (file:line and key) for error messages.
  """
  manifest = os.fspath(manifest)
  if not os.path.isfile(manifest):
    raise FileNotFoundError(f"manifest {manifest!r} does not exist")
  root = os.path.realpath(os.fspath(data_root) if data_root is not None else os.path.dirname(manifest) or ".")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data root {root!r} is not a directory")
  entries, lines_of_key = [], {}
  with open(manifest, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{manifest}:{lineno}"
      try:
        entry = json.loads(line, object_pairs_hook=_json_object)
      except ValueError as e:
        raise ValueError(f"{where}: not a valid JSON object line ({e})") from None
      _check_entry(where, entry)
      if entry["key"] in lines_of_key:
        raise ValueError(f"{where}: duplicate key {entry['key']!r} (first on line {lines_of_key[entry['key']]})")
      lines_of_key[entry["key"]] = lineno
      for name in MANIFEST_ARRAY_FIELDS:
        if name in entry:
          entry[name] = _resolve(where, name, entry[name], root)
      entry["where"] = f"{where} (key {entry['key']!r})"
      entries.append(entry)
  if not entries:
    raise ValueError(f"manifest {manifest!r} has no records")
  return entries


def _load_entry(entry: dict[str, Any], shapes: RecordShapes, codebook_size: int, mmap: bool) -> Record:
  record: dict[str, Any] = {name: entry[name] for name in ("image_description", "video_prompt", "has_first_frame")}
  for name in MANIFEST_ARRAY_FIELDS:
    if name not in entry:
      record[name] = np.zeros(shapes.array_specs()[name][0], np.int32)
      continue
    try:
      record[name] = np.load(entry[name], mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{entry['where']}: {name} file {entry[name]!r} is not a readable .npy array ({e})") from None
  return check_record(record, shapes, codebook_size, index=entry["where"])


def build_dataset(
    out_dir: str | os.PathLike,
    *,
    shapes: RecordShapes,
    codebook_size: int,
    manifest: str | os.PathLike | None = None,
    records: Sequence[Record] | None = None,
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    overwrite: bool = False,
) -> Path:
  """Builds one split of Plan-X records as a TFDS ArrayRecord dataset at `out_dir` and returns `out_dir`.

  Exactly one of `manifest` (see `read_manifest`) or `records` (a random-access sequence of record
  dicts, e.g. a `SyntheticSource`) is given. Every record is checked (`check_record`) before
  anything is written; the dataset is built in a temp dir next to `out_dir` and renamed into place,
  so a failure leaves no output. `out_dir` holds `dataset_info.json`, `features.json`, `metadata.json`
  (shapes, codebook_size) and the ArrayRecord shards; `load_dataset(out_dir)` reads it.
  """
  if (manifest is None) == (records is None):
    raise ValueError("build_dataset needs exactly one of manifest= or records=")
  if not isinstance(shapes, RecordShapes):
    raise ValueError(f"shapes must be a RecordShapes, got {type(shapes).__name__}")
  codebook_size = check_codebook_size(codebook_size)
  if not isinstance(split, str) or not split.isidentifier():
    raise ValueError(f"split must be a name such as 'train', got {split!r}")
  out_dir = Path(out_dir)
  if out_dir.exists() and (out_dir.is_file() or any(out_dir.iterdir())) and not overwrite:
    raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")

  if manifest is not None:
    entries = read_manifest(manifest, data_root)
    for entry in entries:
      _load_entry(entry, shapes, codebook_size, mmap=True)

    def examples():
      for entry in entries:
        yield entry["key"], _load_entry(entry, shapes, codebook_size, mmap=False)
  else:
    if data_root is not None:
      raise ValueError("data_root applies to manifests only; records= are already in memory")
    random_access = hasattr(records, "__len__") and hasattr(records, "__getitem__")
    if isinstance(records, (str, bytes, dict)) or not random_access:
      raise ValueError(f"records must be a random-access sequence of record dicts, got {type(records).__name__}")
    if len(records) == 0:
      raise ValueError("records is empty; a dataset needs at least one record")
    for i in range(len(records)):
      check_record(records[i], shapes, codebook_size, index=i)

    def examples():
      for i in range(len(records)):
        yield str(i), check_record(records[i], shapes, codebook_size, index=i)

  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    builder = PlanxRecords(shapes=shapes, codebook_size=codebook_size, split=split, examples=examples,
                           data_dir=os.fspath(tmp / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    for item in Path(builder.data_dir).iterdir():
      item.rename(tmp / item.name)
    shutil.rmtree(tmp / "tfds")
  return out_dir


class TfdsRecordSource:
  """Random-access records of one split (`len`, `[i]`, `__getitems__`) with the exact schema dtypes; a grain source.

  Attributes: `shapes` and `codebook_size` from the dataset's metadata, `split`, `path`.
  """

  def __init__(self, path: Path, split: str, data_source, shapes: RecordShapes, codebook_size: int):
    self.path, self.split = path, split
    self.shapes, self.codebook_size = shapes, codebook_size
    self._source = data_source

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TfdsRecordSource(path={os.fspath(self.path)!r}, split={self.split!r}, num_records={len(self)})"

  @staticmethod
  def _decode(example: dict[str, Any]) -> Record:
    record = dict(example)
    for name in TEXT_FIELDS:
      record[name] = record[name].decode("utf-8")
    record["has_first_frame"] = np.bool_(record["has_first_frame"])
    return {name: record[name] for name in FIELDS}

  def __getitem__(self, index) -> Record:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise TypeError(f"record indices must be ints, got {index!r}")
    if not 0 <= index < len(self):
      raise IndexError(f"record index {index} out of range [0, {len(self)}) of {self!r}")
    return self._decode(self._source[int(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[Record]:
    return [self._decode(example) for example in self._source.__getitems__([int(i) for i in indices])]


def load_dataset(path: str | os.PathLike, split: str = "train") -> TfdsRecordSource:
  """Opens a dataset written by `build_dataset` as a random-access source of records."""
  path = Path(path)
  if not (path / "dataset_info.json").is_file():
    raise FileNotFoundError(f"{path} is not a built Plan-X records dataset (no dataset_info.json)")
  builder = tfds.builder_from_directory(os.fspath(path))
  if builder.name != DATASET_NAME:
    raise ValueError(f"{path} holds the TFDS dataset {builder.name!r}, not {DATASET_NAME!r}")
  if split not in builder.info.splits:
    raise ValueError(f"{path} has no split {split!r}; it has {sorted(builder.info.splits)}")
  metadata = builder.info.metadata
  shapes = RecordShapes.from_dict(metadata["shapes"])
  return TfdsRecordSource(path, split, builder.as_data_source(split), shapes, int(metadata["codebook_size"]))
