"""Converts a model's params between the stacked layout (`layers`: every leaf with a
leading layer axis, what `nn.scan` makes) and the unrolled one (`layers_0`, `layers_1`, ...).
`key` names the stack ("layers" for the planner, "blocks" for the DiT). Works on NumPy
or JAX arrays; it moves arrays, it does not know what a layer computes."""

import numpy as np

STACKED = "layers"


def _prefix(i: int, key: str) -> str:
  return f"{key}_{i}"


def _map(fn, *trees):
  if isinstance(trees[0], dict):
    return {key: _map(fn, *(t[key] for t in trees)) for key in trees[0]}
  return fn(*trees)


def is_stacked(params: dict, key: str = STACKED) -> bool:
  return key in params


def unstack_layers(params: dict, num_layers: int, key: str = STACKED) -> dict:
  """{key: tree of [L, ...]} -> {key_0: tree, ..., key_{L-1}: tree}."""
  if not is_stacked(params, key):
    return params
  out = {name: value for name, value in params.items() if name != key}
  for i in range(num_layers):
    out[_prefix(i, key)] = _map(lambda x, i=i: x[i], params[key])
  return out


def stack_layers(params: dict, num_layers: int, key: str = STACKED) -> dict:
  """{key_0: tree, ...} -> {key: tree of [L, ...]}."""
  if is_stacked(params, key):
    return params
  missing = [_prefix(i, key) for i in range(num_layers) if _prefix(i, key) not in params]
  if missing:
    raise ValueError(f"unrolled params lack {missing[0]} (expected {num_layers} layers)")
  layers = [params[_prefix(i, key)] for i in range(num_layers)]
  out = {name: value for name, value in params.items() if not name.startswith(f"{key}_")}
  out[key] = _map(lambda *xs: _stack(xs), *layers)
  return out


def _stack(xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  import jax.numpy as jnp

  return jnp.stack(xs)


def to_layout(params: dict, num_layers: int, scan_layers: bool, key: str = STACKED) -> dict:
  """Params in the layout `scan_layers` asks for, whichever layout they are in."""
  return stack_layers(params, num_layers, key) if scan_layers else unstack_layers(params, num_layers, key)
