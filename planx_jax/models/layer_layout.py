"""Converts a decoder's params between the stacked layout (`layers`: every leaf with a
leading layer axis, what `nn.scan` makes) and the unrolled one (`layers_0`, `layers_1`, ...).
Works on NumPy or JAX arrays; it moves arrays, it does not know what a layer computes."""

import numpy as np

STACKED = "layers"


def _prefix(i: int) -> str:
  return f"{STACKED}_{i}"


def _map(fn, *trees):
  if isinstance(trees[0], dict):
    return {key: _map(fn, *(t[key] for t in trees)) for key in trees[0]}
  return fn(*trees)


def is_stacked(params: dict) -> bool:
  return STACKED in params


def unstack_layers(params: dict, num_layers: int) -> dict:
  """{"layers": tree of [L, ...]} -> {"layers_0": tree, ..., "layers_{L-1}": tree}."""
  if not is_stacked(params):
    return params
  out = {key: value for key, value in params.items() if key != STACKED}
  for i in range(num_layers):
    out[_prefix(i)] = _map(lambda x, i=i: x[i], params[STACKED])
  return out


def stack_layers(params: dict, num_layers: int) -> dict:
  """{"layers_0": tree, ...} -> {"layers": tree of [L, ...]}."""
  if is_stacked(params):
    return params
  missing = [_prefix(i) for i in range(num_layers) if _prefix(i) not in params]
  if missing:
    raise ValueError(f"unrolled params lack {missing[0]} (expected {num_layers} layers)")
  layers = [params[_prefix(i)] for i in range(num_layers)]
  out = {key: value for key, value in params.items() if not key.startswith(f"{STACKED}_")}
  out[STACKED] = _map(lambda *xs: _stack(xs), *layers)
  return out


def _stack(xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  import jax.numpy as jnp

  return jnp.stack(xs)


def to_layout(params: dict, num_layers: int, scan_layers: bool) -> dict:
  """Params in the layout `scan_layers` asks for, whichever layout they are in."""
  return stack_layers(params, num_layers) if scan_layers else unstack_layers(params, num_layers)
