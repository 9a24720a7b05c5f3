"""Rotary position embeddings with float positions (scaled grids work).

Half-split ("rotate_half") 1D RoPE as in Qwen2. Tables are computed and applied in
fp32; the result is cast back to the input dtype. The interleaved 3D variant for
the DiT lives next to it when the DiT lands.
"""

import jax
import jax.numpy as jnp
import numpy as np


def inv_frequencies(head_dim: int, theta: float) -> np.ndarray:
  """[head_dim // 2] fp32: theta ** (-2j / head_dim), computed in fp32 like the reference."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
  exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos, sin tables [..., L, head_dim // 2] fp32 for positions [..., L] (int or float)."""
  angles = positions.astype(jnp.float32)[..., None] * inv_frequencies(head_dim, theta)  # [..., L, D/2]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Half-split rotation: x' = x * [cos, cos] + rotate_half(x) * [sin, sin].

  Args:
    x: [B, L, H, D].
    cos, sin: [B, L, D/2] fp32 (from `rope_tables`).
  """
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)  # [B, L, H, D/2] each
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
