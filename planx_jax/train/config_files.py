"""Experiment config files in the big_vision style: `path/to/x.py[:arg]` exposing `get_config(arg)` ->
ml_collections.ConfigDict, plus `--config.a.b=value` overrides. Unknown keys are errors. Not the schema checks of a
stage (see `experiment.py`)."""

import ast
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import ml_collections

from planx_jax.config_utils import unknown_key_error


def _config_path(path: str) -> Path:
  """A config file path as given, or a name under the installed `planx_jax.configs` package (`configs/x.py`)."""
  candidate = Path(path)
  if candidate.is_file():
    return candidate
  if candidate.parent.name == "configs":
    # The package's __path__ as its __init__ leaves it: a source checkout's top-level configs/ is added there.
    for folder in importlib.import_module("planx_jax.configs").__path__:
      packaged = Path(folder) / candidate.name
      if packaged.is_file():
        return packaged
  raise FileNotFoundError(f"config file {path} does not exist")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the file `spec` = "file.py" or "file.py:arg", with overrides applied.

  Args:
    spec: path of a Python file defining `get_config(arg=None)`; `configs/<name>.py` also finds the packaged
      copy when run outside the repository.
    overrides: "--config.a.b=value" or "a.b=value" strings; the value is parsed as a Python literal when it
      can be (ints, floats, bools, tuples) and must match the type of the existing field.
  """
  path, _, arg = str(spec).partition(":")
  file = _config_path(path)
  module_spec = importlib.util.spec_from_file_location(f"planx_config_{file.stem}", os.fspath(file))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {file} has no get_config(arg) function")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"{file}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}")
  for item in overrides:
    apply_override(config, item)
  return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Sets one "--config.a.b=value" / "a.b=value" override in place; unknown keys and type changes are errors."""
  text = item[len("--config."):] if item.startswith("--config.") else item
  if "=" not in text:
    raise ValueError(f"config override {item!r} must look like --config.key=value")
  key, raw = text.split("=", 1)
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    free = i == len(parts) - 1 and i > 0 and parts[i - 1] == "overrides"  # model config fields, checked later
    if free and isinstance(node, ml_collections.ConfigDict):
      with node.ignore_type():
        node[part] = _parse(raw, node.get(part), key)
      return
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise unknown_key_error(".".join(["config", *parts[:i]]), part, valid)
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  value = _parse(raw, old, key)
  with node.ignore_type():
    node[parts[-1]] = value


def _parse(raw: str, old, key: str):
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  if isinstance(old, ml_collections.ConfigDict):
    if not isinstance(value, dict):
      raise ValueError(f"config.{key} is a group; set its fields (config.{key}.<field>=...), got {raw!r}")
    unknown = sorted(set(value) - set(old.keys()))
    if unknown and old.keys():
      raise unknown_key_error(f"config.{key}", unknown[0], sorted(old.keys()))
    return ml_collections.ConfigDict({**old.to_dict(), **value})
  if old is None or isinstance(value, type(old)):
    return value
  if isinstance(old, bool):
    raise ValueError(f"config.{key} is a bool; got {raw!r}")
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(old, str):
    return raw
  if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(old)(value)
  raise ValueError(f"config.{key} is {type(old).__name__} ({old!r}); cannot set it to {raw!r}")
