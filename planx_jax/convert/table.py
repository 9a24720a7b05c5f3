"""Conversion tables: rows mapping one reference tensor to one planx param, used in both directions.

A model's converter lists `Rule`s; `read_params` checks a checkpoint against them
(missing / unexpected / mis-shaped tensors name the tensor) and builds the planx
tree (per-layer tensors stacked on axis 0); `write_tensors` goes back. Knows
nothing about any particular model.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from planx_jax.convert.safetensors_io import SafetensorsReader


@dataclasses.dataclass(frozen=True)
class Rule:
  """One reference tensor <-> one planx param (one per layer when `per_layer`)."""

  ref_key: str  # with "{i}" for the layer index
  path: tuple[str, ...]  # planx param path; per-layer params are stacked on axis 0
  ref_shape: tuple[int, ...]
  to_planx: Callable[[np.ndarray], np.ndarray]
  to_ref: Callable[[np.ndarray], np.ndarray]
  per_layer: bool = True


def identity(x):
  return x


def transpose(x):
  return x.T


def ref_keys(rule: Rule, num_layers: int) -> list[str]:
  return [rule.ref_key.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.ref_key]


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...], what: str = "params"):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"{what} have no entry {'/'.join(path)}")
    tree = tree[key]
  return tree


def read_json_config(path: str | os.PathLike, name: str = "config.json") -> dict[str, Any]:
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is not a directory with a {name} and safetensors files")
  if not (path / name).exists():
    raise FileNotFoundError(f"{path} has no {name}")
  return json.loads((path / name).read_text())


def check_tensors(reader: SafetensorsReader, rules: list[Rule], num_layers: int, *, allowed_extra=(),
                  what: str = "checkpoint") -> None:
  """Raises naming the first missing / unexpected / mis-shaped tensor."""
  present = set(reader.keys())
  expected = {key for rule in rules for key in ref_keys(rule, num_layers)}
  unexpected = sorted(present - expected - set(allowed_extra))
  if unexpected:
    more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
    raise ValueError(f"{what} {reader.path} has unexpected tensors {unexpected[:5]}{more} for this config")
  for rule in rules:
    for key in ref_keys(rule, num_layers):
      if key not in present:
        raise ValueError(f"{what} {reader.path} is missing tensor {key!r} (expected shape {rule.ref_shape})")
      if reader.shape(key) != rule.ref_shape:
        raise ValueError(f"tensor {key!r} in {reader.path} has shape {reader.shape(key)}, expected "
                         f"{rule.ref_shape} from the config")


def read_params(reader: SafetensorsReader, rules: list[Rule], num_layers: int, param_dtype=None,
                params: dict | None = None) -> dict:
  """Builds (or extends) a planx param tree from already-checked tensors."""
  dtype = None if param_dtype is None else np.dtype(param_dtype)
  params = {} if params is None else params
  for rule in rules:
    arrays = [rule.to_planx(reader.get(key)) for key in ref_keys(rule, num_layers)]
    value = np.stack(arrays) if rule.per_layer else arrays[0]
    set_path(params, rule.path, value if dtype is None else value.astype(dtype))
  return params


def write_tensors(params: dict, rules: list[Rule], num_layers: int, dtype=None) -> dict[str, np.ndarray]:
  """planx params (stacked layout) -> {reference name: numpy array}, optionally cast to `dtype`."""
  dtype = None if dtype is None else np.dtype(dtype)
  out = {}
  for rule in rules:
    value = np.asarray(get_path(params, rule.path))
    keys = ref_keys(rule, num_layers)
    pieces = [value[i] for i in range(len(keys))] if rule.per_layer else [value]
    for key, piece in zip(keys, pieces):
      tensor = rule.to_ref(piece)
      if tensor.shape != rule.ref_shape:
        raise ValueError(f"param {'/'.join(rule.path)} gives {key!r} of shape {tensor.shape}, expected "
                         f"{rule.ref_shape}")
      out[key] = tensor if dtype is None else tensor.astype(dtype)
  return out
