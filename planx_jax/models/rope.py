"""Rotary position embeddings with float positions (scaled grids work).

Half-split ("rotate_half") 1D RoPE as in Qwen2, and Wan's interleaved-pair 3D RoPE
(t / h / w slices of head_dim). Tables are computed and applied in fp32; results are
cast back to the input dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np

# The rotations themselves live with the attention kernels (which apply them inside the kernel); re-exported here.
from planx_jax.kernels.attention.rope import apply_rope_half, apply_rope_interleaved

__all__ = ["apply_rope_half", "apply_rope_interleaved", "grid_positions", "inv_frequencies", "rope3d_axis_dims",
           "rope3d_tables", "rope_tables", "video_rope_tables"]


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


# --- Wan's 3D RoPE: interleaved pairs, head_dim split into t / h / w ------------------------------


def rope3d_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Rotary dims per axis (t, h, w): (d - 4 (d // 6), 2 (d // 6), 2 (d // 6)); 44/42/42 for d = 128."""
  h = w = 2 * (head_dim // 6)
  t = head_dim - h - w
  if t % 2 or t <= 0:
    raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
  return t, h, w


def _rope3d_inv_frequencies(head_dim: int, theta: float) -> list[np.ndarray]:
  """Per-axis inverse frequencies in float64: theta ** (-2j / dim_axis)."""
  return [1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)) for dim in rope3d_axis_dims(head_dim)]


def rope3d_tables(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """cos, sin [..., L, head_dim // 2] fp32 for float positions [..., L, 3] (t, h, w); traced positions."""
  positions = positions.astype(jnp.float32)
  angles = [positions[..., axis, None] * inv.astype(np.float32)  # [..., L, dim_axis / 2]
            for axis, inv in enumerate(_rope3d_inv_frequencies(head_dim, theta))]
  angles = jnp.concatenate(angles, axis=-1)  # [..., L, D/2]
  return jnp.cos(angles), jnp.sin(angles)


def identity_rope(tables: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """cos = 1, sin = 0 tables shaped like `tables`: rotating by them changes nothing."""
  cos, sin = tables
  return jnp.ones_like(cos), jnp.zeros_like(sin)


def grid_positions(grid: tuple[int, int, int]) -> np.ndarray:
  """[F*H*W, 3] integer (f, h, w) positions of a token grid, ordered f, then h, then w."""
  f, h, w = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
  return np.stack([f, h, w], axis=-1).reshape(-1, 3)


def video_rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  """cos, sin [F*H*W, head_dim // 2] fp32 for the integer token grid, computed in float64.

  Static (NumPy) because the grid depends on shapes only.
  """
  positions = grid_positions(grid).astype(np.float64)
  angles = np.concatenate([positions[:, axis, None] * inv  # [L, dim_axis / 2]
                           for axis, inv in enumerate(_rope3d_inv_frequencies(head_dim, theta))], axis=-1)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
