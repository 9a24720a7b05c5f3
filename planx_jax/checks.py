"""The argument checks public entry points share (losses, samplers, facades): each raises ValueError naming the
argument, what was expected and what came (`describe`), and runs on the host at trace time, never on device.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def describe(x) -> str:
  """'shape (2, 3) dtype float32' for an array, 'a list' for anything else: the 'got ...' of an error."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    return f"a {type(x).__name__}"
  return f"shape {tuple(x.shape)} dtype {x.dtype}"


def f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def is_concrete(x) -> bool:
  """False under a trace (a jit / grad / vmap tracer): value checks only apply to concrete arrays."""
  return not isinstance(x, jax.core.Tracer)


def require_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def require_size(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")


def require_real(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(
      value):
    raise ValueError(f"{name} must be a finite Python number, got {value!r}")


def require_positive(name, value):
  require_real(name, value)
  if value <= 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def require_probability(name, value):
  require_real(name, value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def require_latents(name, x):
  """Float video latents [B, F, H, W, C]."""
  if getattr(x, "ndim", None) != 5 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be float latents [B, F, H, W, C], got {describe(x)}")


def require_float_like(name, x, ref_name, ref):
  """A float array of `ref`'s shape."""
  if not hasattr(x, "shape") or not jnp.issubdtype(x.dtype, jnp.floating) or tuple(x.shape) != tuple(ref.shape):
    raise ValueError(f"{name} must be a float array shaped like {ref_name} {tuple(ref.shape)}, got {describe(x)}")


def require_count_mask(name, mask, shape):
  """A bool or integer mask (nonzero = counted) of exactly `shape`."""
  if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
    raise ValueError(f"{name} must be a bool or integer array of shape {shape}, got {describe(mask)}")
  if not (jnp.issubdtype(mask.dtype, jnp.bool_) or jnp.issubdtype(mask.dtype, jnp.integer)):
    raise ValueError(f"{name} must be bool or integer (nonzero = counted), got dtype {mask.dtype}")
  if tuple(mask.shape) != shape:
    raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape}")
