"""Rotary position embedding as the attention kernels see it: rotations from gathered cos / sin tables.

The two layouts Plan-X needs (Qwen2's half-split, Wan's interleaved pairs), applied in fp32, and the packed
cos / sin table the Pallas kernel rotates tiles with. Not the table construction from positions: `models.rope`.
"""

import jax
import jax.numpy as jnp

ROPE_STYLES = ("half", "interleaved")


def validate_style(style: str) -> str:
  if style not in ROPE_STYLES:
    raise ValueError(f"unknown rope_style {style!r}; expected one of {ROPE_STYLES}")
  return style


def _per_head(table: jax.Array) -> jax.Array:
  """[B or 1, L, D/2] (or [L, D/2]) -> [B or 1, L, 1, D/2], broadcasting over heads."""
  return (table[None] if table.ndim == 2 else table)[:, :, None, :]


def apply_rope_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Half-split rotation: x' = x * [cos, cos] + rotate_half(x) * [sin, sin].

  Args:
    x: [B, L, H, D].
    cos, sin: [B or 1, L, D/2] (or [L, D/2]) fp32.
  """
  cos, sin = _per_head(cos), _per_head(sin)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, L, H, D/2] each
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def apply_rope_interleaved(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate interleaved pairs (x[2i], x[2i+1]) by the angle of frequency i, in fp32.

  Args:
    x: [B, L, H, D].
    cos, sin: [B or 1, L, D/2] (or [L, D/2]) fp32.
  """
  cos, sin = _per_head(cos), _per_head(sin)
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # [B, L, H, D/2, 2]
  x1, x2 = x32[..., 0], x32[..., 1]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # [B, L, H, D/2, 2]
  return out.reshape(x.shape).astype(x.dtype)


def apply_rope(x: jax.Array, tables: tuple[jax.Array, jax.Array], style: str) -> jax.Array:
  """`apply_rope_half` or `apply_rope_interleaved` by `style`."""
  rotate = apply_rope_half if validate_style(style) == "half" else apply_rope_interleaved
  return rotate(x, *tables)


def packed_table(cos: jax.Array, sin: jax.Array, style: str) -> jax.Array:
  """[.., L, D/2] cos and sin -> one [.., L, D] fp32 table in the lane order the kernel unpacks.

  "half": [cos, sin] (lanes 0..D/2-1 hold cos); "interleaved": [c0, s0, c1, s1, ...] (each rotated pair's lanes
  hold its own cos and sin). The kernel rebuilds the full-width cos and signed sin with lane rolls, so a table
  costs D values per token instead of 2 D.
  """
  cos, sin = cos.astype(jnp.float32), sin.astype(jnp.float32)
  if validate_style(style) == "half":
    return jnp.concatenate([cos, sin], axis=-1)
  return jnp.stack([cos, sin], axis=-1).reshape(*cos.shape[:-1], 2 * cos.shape[-1])
