"""XLA reference attention: the numerics every attention kernel is tested against.

Causal / bidirectional, grouped-query (N query heads share K kv heads), segment
ids for packing and padding, and a query offset for KV-cache continuation.
Materialises the [B, K, G, T, S] fp32 logits, so it is for reference and short
sequences; kernels replace it behind `kernels.attention.attention`.
"""

import jax
import jax.numpy as jnp

# Finite mask value (not -inf) so masked rows never produce NaN in softmax.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def visibility_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    q_offset=0,
    q_segment_ids=None,
    kv_segment_ids=None,
) -> jax.Array | None:
  """Boolean [B or 1, T, S] mask: True where query i may attend key slot j.

  Causal: key slot j is visible to query i iff j <= q_offset + i (q_offset is a
  scalar or [B]). Segments: visible iff the segment ids are equal.
  Returns None when nothing is masked.
  """
  mask = None
  if causal:
    offset = jnp.asarray(q_offset, jnp.int32).reshape(-1, 1, 1)  # [B or 1, 1, 1]
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[None, :, None] + offset  # [B|1, T, 1]
    k_pos = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]  # [1, 1, S]
    mask = k_pos <= q_pos
  if q_segment_ids is not None or kv_segment_ids is not None:
    if q_segment_ids is None or kv_segment_ids is None:
      raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # [B, T, S]
    mask = same if mask is None else mask & same
  return mask


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    q_offset=0,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """softmax(q k^T * scale + mask) v with fp32 logits and softmax statistics.

  Args:
    q: [B, T, N, D] queries.
    k, v: [B, S, K, D] keys and values; N must be a multiple of K (GQA: query
      head h reads kv head h // (N // K)).
    causal: mask key slots after the query's slot (see `visibility_mask`).
    q_offset: slot of query 0 in the key sequence (KV-cache decoding).
    q_segment_ids: [B, T] int, kv_segment_ids: [B, S] int; attention stays inside
      equal ids.
    scale: logit scale, default D ** -0.5.

  Returns:
    [B, T, N, D] in q's dtype. Rows with no visible key are zero.
  """
  b, t, n, d = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  scale = d**-0.5 if scale is None else scale
  qg = q.reshape(b, t, kv_heads, g, d)  # [B, T, K, G, D]
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
  logits = logits * scale  # [B, K, G, T, S] fp32
  mask = visibility_mask(
      t, s, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids
  )
  if mask is not None:
    logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  # PV in fp32: probabilities are not rounded to v's dtype (and XLA:CPU has no bf16 x bf16 -> f32 batched dot).
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))  # [B, T, K, G, D] fp32
  if mask is not None:
    any_visible = jnp.any(mask, axis=-1)  # [B|1, T]
    out = jnp.where(any_visible[:, :, None, None, None], out, 0.0)
  return out.reshape(b, t, n, d).astype(q.dtype)
