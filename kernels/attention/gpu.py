"""The GPU attention path: `jax.nn.dot_product_attention` (cuDNN fused attention, or its XLA form) with our masks.

Builds the boolean mask the reference semantics need (segment ids, causal with a query offset) and zeroes rows
with no visible key, as `reference.xla_attention` does. Not a kernel of our own; not the dispatch rules.
"""

import jax
import jax.numpy as jnp

from planx_jax.kernels.attention.reference import visibility_mask


def cudnn_unsupported_reason(q, k, *, q_offset=0) -> str | None:
  """Why cuDNN fused attention cannot run this call (None when it can)."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"cuDNN attention needs bf16 / fp16 inputs, got {q.dtype}"
  d = q.shape[-1]
  if d > 256 or d % 8:
    return f"cuDNN attention needs head_dim <= 256 and a multiple of 8, got {d}"
  if not (isinstance(q_offset, int) and q_offset == 0):
    return "cuDNN attention has no query offset (KV-cache continuation)"
  return None


def jax_nn_attention(q, k, v, *, causal: bool = False, q_offset=0, q_segment_ids=None, kv_segment_ids=None,
                     scale: float | None = None, implementation: str | None = None) -> jax.Array:
  """`reference.xla_attention` semantics through `jax.nn.dot_product_attention(implementation=...)`.

  q [B, T, N, D], k / v [B, S, K, D] (GQA when N % K == 0). A causal call without offset or segment ids uses
  `is_causal`; anything else becomes a [B, 1, T, S] boolean mask.
  """
  t, s = q.shape[1], k.shape[1]
  plain_causal = causal and q_segment_ids is None and isinstance(q_offset, int) and q_offset == 0 and t == s
  mask = None
  if not plain_causal:
    mask = visibility_mask(t, s, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids,
                           kv_segment_ids=kv_segment_ids)  # [B|1, T, S] or None
  out = jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None], scale=scale,
                                     is_causal=plain_causal, implementation=implementation)
  if mask is not None:
    out = jnp.where(jnp.any(mask, axis=-1)[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out
