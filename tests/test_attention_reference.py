"""The attention seam: XLA reference against torch SDPA and a NumPy oracle; masks, GQA, offsets, dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from planx_jax.kernels.attention import attention, resolve_impl, xla_attention


def _numpy_attention(q, k, v, mask):
  """Dense oracle in float64: q [B,T,N,D], k/v [B,S,K,D], mask [B,T,S] bool (or None)."""
  b, t, n, d = q.shape
  g = n // k.shape[2]
  k = np.repeat(k, g, axis=2).astype(np.float64)
  v = np.repeat(v, g, axis=2).astype(np.float64)
  logits = np.einsum("btnd,bsnd->bnts", q.astype(np.float64), k) / np.sqrt(d)
  if mask is not None:
    logits = np.where(mask[:, None], logits, -np.inf)
  peak = np.max(logits, -1, keepdims=True)
  peak = np.where(np.isfinite(peak), peak, 0)
  weights = np.exp(logits - peak)
  denom = weights.sum(-1, keepdims=True)
  weights = np.where(denom > 0, weights / np.where(denom > 0, denom, 1), 0)
  return np.einsum("bnts,bsnd->btnd", weights, v)


def _rand(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("groups", [1, 2, 7])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_torch_sdpa(groups, causal):
  q, k, v = _rand((2, 13, 2 * groups, 16), 0), _rand((2, 13, 2, 16), 1), _rand((2, 13, 2, 16), 2)
  got = xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal)
  tq, tk, tv = (torch.tensor(x).transpose(1, 2) for x in (q, k, v))
  expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=True)
  np.testing.assert_allclose(np.asarray(got), expected.transpose(1, 2).numpy(), atol=1e-5, rtol=0)


def test_query_offset_and_segments_match_oracle():
  q, k, v = _rand((2, 5, 4, 8), 3), _rand((2, 12, 2, 8), 4), _rand((2, 12, 2, 8), 5)
  q_seg = np.array([[1, 1, 1, 2, 2], [1, 1, 1, 1, 1]])
  kv_seg = np.array([[0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0], [1] * 12])
  offset = 5
  got = xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True, q_offset=offset,
                      q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(kv_seg))
  causal = np.arange(12)[None, None, :] <= (np.arange(5) + offset)[None, :, None]
  mask = causal & (q_seg[:, :, None] == kv_seg[:, None, :])
  np.testing.assert_allclose(np.asarray(got), _numpy_attention(q, k, v, mask), atol=1e-5, rtol=0)


def test_fully_masked_rows_are_zero_and_finite():
  q, k, v = _rand((1, 3, 2, 8), 6), _rand((1, 4, 2, 8), 7), _rand((1, 4, 2, 8), 8)
  got = xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.array([[1, 3, 1]]),
                      kv_segment_ids=jnp.array([[1, 1, 2, 2]]))
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_array_equal(np.asarray(got[0, 1]), 0.0)
  grads = jax.grad(lambda q: xla_attention(q, jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.array([[1, 3, 1]]),
                                           kv_segment_ids=jnp.array([[1, 1, 2, 2]])).sum())(jnp.asarray(q))
  assert np.all(np.isfinite(np.asarray(grads)))


def test_bfloat16_inputs_keep_fp32_statistics():
  q, k, v = _rand((1, 64, 4, 32), 9), _rand((1, 64, 4, 32), 10), _rand((1, 64, 4, 32), 11)
  got = xla_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), causal=True)
  assert got.dtype == jnp.bfloat16
  mask = np.tril(np.ones((64, 64), bool))[None]
  np.testing.assert_allclose(np.asarray(got, np.float32), _numpy_attention(q, k, v, mask), atol=3e-2, rtol=0)


def test_dispatch():
  assert resolve_impl("auto") == "xla"
  q = jnp.asarray(_rand((1, 4, 2, 8), 12))
  np.testing.assert_array_equal(attention(q, q, q, impl="auto", causal=True), xla_attention(q, q, q, causal=True))
  with pytest.raises(ValueError, match="unknown attention_impl 'splash'; available: auto, xla"):
    attention(q, q, q, impl="splash")
  with pytest.raises(ValueError, match="given together"):
    xla_attention(q, q, q, q_segment_ids=jnp.ones((1, 4), jnp.int32))
