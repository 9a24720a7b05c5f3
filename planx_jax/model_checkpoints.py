"""planx model checkpoint directories: `planx.json` metadata + Orbax params (+ tokenizer).

A model checkpoint is what `planx convert` writes and `planx plan` / training read:
params only, no optimizer state (train-state checkpoints are the trainer's).
Written to a temp dir and renamed, so a failure leaves nothing half-written.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from planx_jax.io_utils import atomic_directory

FORMAT_VERSION = 1
META_FILE = "planx.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def save_model(path: str | os.PathLike, *, kind: str, config: dict[str, Any], params: Any,
               extras: dict[str, Any] | None = None, tokenizer=None, overwrite: bool = False) -> Path:
  """Writes `params` (numpy or JAX arrays) with their metadata.

  Args:
    kind: model kind, e.g. "planner"; checked on load.
    config: the model config as a dict.
    extras: more JSON metadata (token layout, provenance).
    tokenizer: a transformers tokenizer (saved with `save_pretrained`) or a
      directory to copy, or None.
  """
  path = Path(path).absolute()
  with atomic_directory(path, overwrite=overwrite) as tmp:
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "config": config, **(extras or {})}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    if tokenizer is not None:
      if isinstance(tokenizer, (str, os.PathLike)):
        shutil.copytree(tokenizer, tmp / TOKENIZER_DIR)
      else:
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  return path


def load_meta(path: str | os.PathLike, kind: str) -> dict[str, Any]:
  path = Path(path)
  meta_file = path / META_FILE
  if not meta_file.exists():
    raise FileNotFoundError(f"{path} is not a planx checkpoint directory (no {META_FILE}); "
                            "create one with `planx convert`")
  meta = json.loads(meta_file.read_text())
  if meta.get("kind") != kind:
    raise ValueError(f"{path} holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path} has checkpoint format {meta.get('format_version')}, this planx_jax reads "
                     f"{FORMAT_VERSION}")
  return meta


def restore_params(path: str | os.PathLike, abstract_params: Any) -> Any:
  """Restores params into the structure, dtypes and (optional) shardings of `abstract_params`.

  `abstract_params` is a pytree of `jax.ShapeDtypeStruct` (e.g. from
  `jax.eval_shape`); a shape mismatch is an error naming the param.
  """
  path = Path(path).absolute() / PARAMS_DIR
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(path)
  stored_tree = getattr(stored, "item_metadata", stored)
  stored_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(stored_tree)}
  wanted_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract_params)}
  for key in sorted(set(wanted_flat) | set(stored_flat)):
    if key not in stored_flat:
      raise ValueError(f"checkpoint {path} is missing param {key}")
    if key not in wanted_flat:
      raise ValueError(f"checkpoint {path} has unexpected param {key}")
    if tuple(stored_flat[key].shape) != tuple(wanted_flat[key].shape):
      raise ValueError(f"param {key} in {path} has shape {tuple(stored_flat[key].shape)}, expected "
                       f"{tuple(wanted_flat[key].shape)}")

  def with_sharding(x):
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return checkpointer.restore(path, jax.tree.map(with_sharding, abstract_params))


def tokenizer_dir(path: str | os.PathLike) -> Path | None:
  directory = Path(path) / TOKENIZER_DIR
  return directory if directory.is_dir() else None
