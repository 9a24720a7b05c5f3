"""Rotary position embedding as the attention kernels see it: rotations from gathered cos / sin tables.

The two layouts Plan-X needs (Qwen2's half-split, Wan's interleaved pairs), applied in fp32, and the full-width
signed tables the Pallas kernel rotates tiles with. Not the table construction from positions: `models.rope`.
"""

import jax
import jax.numpy as jnp

ROPE_STYLES = ("half", "interleaved")


def validate_style(style: str) -> str:
  if style not in ROPE_STYLES:
    raise ValueError(f"unknown rope_style {style!r}; expected one of {ROPE_STYLES}")
  return style


def apply_rope_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Half-split rotation: x' = x * [cos, cos] + rotate_half(x) * [sin, sin].

  Args:
    x: [B, L, H, D].
    cos, sin: [B or 1, L, D/2] (or [L, D/2]) fp32.
  """
  if cos.ndim == 2:
    cos, sin = cos[None], sin[None]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)  # [B, L, H, D/2] each
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def apply_rope_interleaved(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate interleaved pairs (x[2i], x[2i+1]) by the angle of frequency i, in fp32.

  Args:
    x: [B, L, H, D].
    cos, sin: [B or 1, L, D/2] (or [L, D/2]) fp32.
  """
  if cos.ndim == 2:
    cos, sin = cos[None], sin[None]
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # [B, L, H, D/2, 2]
  x1, x2 = x32[..., 0], x32[..., 1]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # [B, L, H, D/2, 2]
  return out.reshape(x.shape).astype(x.dtype)


def apply_rope(x: jax.Array, tables: tuple[jax.Array, jax.Array], style: str) -> jax.Array:
  """`apply_rope_half` or `apply_rope_interleaved` by `style`."""
  rotate = apply_rope_half if validate_style(style) == "half" else apply_rope_interleaved
  return rotate(x, *tables)


def full_width_tables(cos: jax.Array, sin: jax.Array, style: str) -> tuple[jax.Array, jax.Array]:
  """[.., L, D/2] tables -> ([.., L, D] cos, [.., L, D] signed sin) fp32 so that x' = x * cos + partner(x) * sin.

  partner(x) is x rolled by D/2 for "half" ([x2, x1], sin signed [-sin, sin]) and the pair neighbour
  (lane i ^ 1) for "interleaved" (sin signed [-s0, s0, -s1, s1, ...]). Negating the signed sin gives the
  inverse rotation (the gradient's).
  """
  cos, sin = cos.astype(jnp.float32), sin.astype(jnp.float32)
  if validate_style(style) == "half":
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([-sin, sin], axis=-1)
  full_cos = jnp.repeat(cos, 2, axis=-1)  # [.., L, D]
  signed_sin = jnp.stack([-sin, sin], axis=-1).reshape(*sin.shape[:-1], 2 * sin.shape[-1])  # [.., L, D]
  return full_cos, signed_sin
