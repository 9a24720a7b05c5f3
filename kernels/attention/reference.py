"""XLA reference attention: the numerics every attention kernel is tested against.

Causal / bidirectional, grouped-query (N query heads share K kv heads), segment
ids for packing and padding, a query offset for KV-cache continuation; and Plan-X's
split text/semantic cross-attention under one softmax.
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


def _heads_major(q: jax.Array, kv_heads: int) -> jax.Array:
  """q [B, T, N, D] -> [B, K, G*T, D]: the G query heads sharing a kv head become rows of one matmul."""
  b, t, n, d = q.shape
  g = n // kv_heads
  return q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)


def _scaled_logits(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
  """q [B, T, N, D], k [B, S, K, D] -> fp32 logits [B, K, G, T, S] (G = N // K query heads per kv head).

  Computed as one batched matmul per kv head on head-major operands, so the big
  [.., T, S] array is produced in its natural layout (no transposed copies).
  """
  b, t, n, _ = q.shape
  kv_heads = k.shape[2]
  logits = jnp.einsum("bkmd,bksd->bkms", _heads_major(q, kv_heads), k.transpose(0, 2, 1, 3),
                      preferred_element_type=jnp.float32)  # [B, K, G*T, S]
  return logits.reshape(b, kv_heads, n // kv_heads, t, k.shape[1]) * scale


def _exp_weights(logits: jax.Array, row_max: jax.Array) -> tuple[jax.Array, jax.Array]:
  """exp(logits - row_max) [B, K, G, T, S] and its row sums [B, K, G, T], fp32."""
  weights = jnp.exp(logits - row_max[..., None])
  return weights, jnp.sum(weights, axis=-1)


def _weighted_values(probs: jax.Array, v: jax.Array) -> jax.Array:
  """probs [B, K, G, T, S] @ v [B, S, K, D] -> [B, K, G, T, D] fp32, one batched matmul per kv head."""
  b, kv_heads, g, t, s = probs.shape
  # PV in fp32: probabilities are not rounded to v's dtype (and XLA:CPU has no bf16 x bf16 -> f32 batched dot).
  out = jnp.einsum("bkms,bksd->bkmd", probs.reshape(b, kv_heads, g * t, s),
                   v.transpose(0, 2, 1, 3).astype(jnp.float32))  # [B, K, G*T, D]
  return out.reshape(b, kv_heads, g, t, -1)


def _heads_last(out: jax.Array) -> jax.Array:
  """[B, K, G, T, D] -> [B, T, N, D]."""
  b, k, g, t, d = out.shape
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, d)


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
  t, s = q.shape[1], k.shape[1]
  scale = q.shape[-1]**-0.5 if scale is None else scale
  logits = _scaled_logits(q, k, scale)  # [B, K, G, T, S] fp32
  mask = visibility_mask(
      t, s, causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids
  )
  if mask is not None:
    logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
  weights, row_sum = _exp_weights(logits, jnp.max(logits, axis=-1))
  out = _heads_last(_weighted_values(weights / row_sum[..., None], v))  # [B, T, N, D] fp32
  if mask is not None:
    any_visible = jnp.any(mask, axis=-1)  # [B|1, T]
    out = jnp.where(any_visible[:, :, None, None], out, 0.0)  # [B, T, N, D]
  return out.astype(q.dtype)


def _split_logits(q, q_rot, k_text, k_sem, sem_mask, scale):
  """Text logits (unrotated q) and semantic logits (rotated q, masked keys at MASK_VALUE), [B, N, 1, T, S_*]."""
  scale = q.shape[-1]**-0.5 if scale is None else scale
  text = _scaled_logits(q, k_text, scale)
  sem = _scaled_logits(q_rot, k_sem, scale)
  if sem_mask is not None:
    sem = jnp.where(sem_mask.astype(bool)[:, None, None, None, :], sem, MASK_VALUE)
  return text, sem


def split_cross_attention_logits(q, q_rot, k_text, k_sem, *, sem_mask=None, scale=None) -> jax.Array:
  """[B, N, T, S_text + S_sem] fp32 logits of `xla_split_cross_attention` (masked semantic keys at MASK_VALUE)."""
  text, sem = _split_logits(q, q_rot, k_text, k_sem, sem_mask, scale)
  b, n, _, t, _ = text.shape
  return jnp.concatenate([text, sem], axis=-1).reshape(b, n, t, -1)


def xla_split_cross_attention(
    q: jax.Array,
    q_rot: jax.Array,
    k_text: jax.Array,
    v_text: jax.Array,
    k_sem: jax.Array,
    v_sem: jax.Array,
    *,
    sem_mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """Plan-X Eq. 6-7: softmax([q k_text^T | R(q) R(k_sem)^T] * scale) [v_text | v_sem].

  One softmax over a text segment (unrotated q, no mask: Wan's text keys are
  zero-padded, not masked) and a semantic segment (rotated q and keys), computed
  as two segments sharing the row max and the normaliser: a fully masked semantic
  segment adds exact zeros, so the result is bitwise the text-only `xla_attention`.

  Args:
    q, q_rot: [B, T, N, D] queries, unrotated and rotated (3D RoPE at the video positions).
    k_text, v_text: [B, S_text, N, D].
    k_sem, v_sem: [B, S_sem, N, D], k_sem already rotated at the semantic positions.
    sem_mask: [B, S_sem] bool, False drops a semantic key (padding); None keeps all.
    scale: logit scale, default D ** -0.5.

  Returns:
    [B, T, N, D] in q's dtype.
  """
  if k_sem.shape[1] == 0:  # an empty semantic segment adds nothing to the softmax
    return xla_attention(q, k_text, v_text, scale=scale)
  text, sem = _split_logits(q, q_rot, k_text, k_sem, sem_mask, scale)  # [B, N, 1, T, S_*]
  row_max = jnp.maximum(jnp.max(text, axis=-1), jnp.max(sem, axis=-1))  # [B, N, 1, T]
  text_weights, text_sum = _exp_weights(text, row_max)
  sem_weights, sem_sum = _exp_weights(sem, row_max)
  row_sum = (text_sum + sem_sum)[..., None]  # one normaliser for both segments
  out = _weighted_values(text_weights / row_sum, v_text) + _weighted_values(sem_weights / row_sum, v_sem)
  return _heads_last(out).astype(q.dtype)
