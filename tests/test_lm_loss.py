"""The planner loss (Plan-X Eq. 2): shift semantics, parity with PyTorch's cross-entropy, chunked == naive
in value and gradient, peak memory of the chunked loss, and the loss on the real `Planner`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from planx_jax.losses.lm import LossOutput, chunked_masked_nll, masked_nll, next_token_targets
from planx_jax.models.planner import Planner
from planx_jax.models.planner_config import PlannerConfig

B, L, H, V = 2, 13, 16, 29


def random_problem(seed, b=B, l=L, h=H, v=V, keep=0.7):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(b, l, h)).astype(np.float32)
  head_hv = (rng.normal(size=(h, v)) / np.sqrt(h)).astype(np.float32) * 3.0
  targets = rng.integers(0, v, (b, l)).astype(np.int32)
  mask = rng.random((b, l)) < keep
  return hidden, head_hv, targets, mask


def assert_close(got, expected, rtol=1e-6):
  """max |got - expected| <= rtol * max(|expected|, 1): a relative bound that also covers values near 0."""
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  assert got.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), 1.0)
  assert np.all(np.isfinite(got)) and float(np.max(np.abs(got - expected))) <= rtol * scale


def naive_loss(hidden, head, targets, mask, head_layout="hv"):
  spec = "blh,hv->blv" if head_layout == "hv" else "blh,vh->blv"
  logits = jnp.einsum(spec, hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
  return masked_nll(logits, targets, mask).loss


naive_value_and_grads = jax.jit(jax.value_and_grad(naive_loss, (0, 1)), static_argnames="head_layout")


# --- next_token_targets -------------------------------------------------------------------------------------

def test_next_token_targets_shift_by_hand():
  ids = np.array([[5, 6, 7, 8], [1, 2, 3, 4]], np.int32)
  loss_mask = np.array([[0, 0, 1, 1], [0, 1, 0, 1]], np.int32)
  targets, target_mask = next_token_targets(ids, loss_mask)
  np.testing.assert_array_equal(targets, [[6, 7, 8, 0], [2, 3, 4, 0]])
  np.testing.assert_array_equal(target_mask, [[False, True, True, False], [True, False, True, False]])
  assert target_mask.dtype == jnp.bool_ and targets.dtype == jnp.int32


def test_next_token_targets_never_counts_the_last_position():
  targets, target_mask = next_token_targets(np.ones((3, 5), np.int32), np.ones((3, 5), bool))
  np.testing.assert_array_equal(np.asarray(target_mask).sum(axis=1), [4, 4, 4])
  assert not np.asarray(target_mask)[:, -1].any()


@pytest.mark.parametrize("ids, mask, match", [
    (np.zeros((2, 3), np.float32), np.ones((2, 3), bool), "token_ids must be an integer"),
    (np.zeros((3,), np.int32), np.ones((3,), bool), "token_ids must be an integer"),
    (np.zeros((2, 3), np.int32), np.ones((2, 4), bool), r"loss_mask has shape \(2, 4\), expected \(2, 3\)"),
    (np.zeros((2, 3), np.int32), np.ones((2, 3), np.float32), "loss_mask must be bool or integer"),
])
def test_next_token_targets_rejects_bad_input(ids, mask, match):
  with pytest.raises(ValueError, match=match):
    next_token_targets(ids, mask)


# --- masked_nll ----------------------------------------------------------------------------------------------

def test_masked_nll_matches_torch_cross_entropy():
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(3, 11, 37)) * 4).astype(np.float32)
  targets = rng.integers(0, 37, (3, 11)).astype(np.int64)
  mask = rng.random((3, 11)) < 0.6
  out = masked_nll(logits, targets, mask)
  assert isinstance(out, LossOutput) and int(out.num_tokens) == int(mask.sum())

  flat_logits = torch.tensor(logits.reshape(-1, 37), dtype=torch.float64)
  flat_targets = torch.tensor(targets.reshape(-1))
  flat_mask = torch.tensor(mask.reshape(-1))
  summed = torch.nn.functional.cross_entropy(flat_logits[flat_mask], flat_targets[flat_mask], reduction="sum")
  ignored = torch.nn.functional.cross_entropy(flat_logits, torch.where(flat_mask, flat_targets, -100),
                                              ignore_index=-100, reduction="mean")
  assert_close(out.nll_sum, summed.item())
  assert_close(out.loss, summed.item() / int(mask.sum()))
  assert_close(out.loss, ignored.item())


def test_masked_nll_upcasts_bf16_logits():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 5, 19)) * 3, jnp.bfloat16)
  targets, mask = rng.integers(0, 19, (2, 5)), np.ones((2, 5), bool)
  expected = torch.nn.functional.cross_entropy(torch.tensor(np.asarray(logits, np.float64).reshape(-1, 19)),
                                               torch.tensor(targets.reshape(-1)))
  out = masked_nll(logits, targets, mask)
  assert out.loss.dtype == jnp.float32
  assert_close(out.loss, expected.item())


def test_all_masked_gives_zero_loss_and_finite_zero_grads():
  hidden, head, targets, _ = random_problem(3)
  mask = np.zeros((B, L), bool)
  for fn in (naive_loss, lambda h, w, t, m: chunked_masked_nll(h, w, t, m, chunk_size=4).loss,
             lambda h, w, t, m: chunked_masked_nll(h, w, t, m, chunk_size=4, vocab_chunk_size=8).loss):
    loss, grads = jax.jit(jax.value_and_grad(fn, (0, 1)))(hidden, head, targets, mask)
    assert float(loss) == 0.0
    for g in grads:
      assert np.all(np.isfinite(g)) and not np.any(g)


def test_uncounted_positions_may_hold_any_id():
  """HF-style -100 (or any id) at masked-out positions neither raises nor changes the loss."""
  hidden, head, targets, mask = random_problem(4)
  padded = np.where(mask, targets, -100).astype(np.int32)
  for fn in (naive_loss, lambda h, w, t, m: chunked_masked_nll(h, w, t, m, chunk_size=5, vocab_chunk_size=8).loss):
    fn = jax.jit(fn)
    assert_close(fn(hidden, head, padded, mask), fn(hidden, head, targets, mask), rtol=0)


def test_counted_out_of_range_id_raises_when_concrete_and_is_nan_under_jit():
  hidden, head, targets, mask = random_problem(5, keep=1.0)
  bad = targets.copy()
  bad[1, 4] = V
  with pytest.raises(ValueError, match=r"targets\[1, 4\] = 29 .* outside the vocabulary \[0, 29\)"):
    masked_nll(np.zeros((B, L, V), np.float32), bad, mask)
  with pytest.raises(ValueError, match=r"targets\[1, 4\]"):
    chunked_masked_nll(hidden, head, bad, mask)
  bad[1, 4] = -1
  jitted = [jax.jit(naive_loss),
            jax.jit(lambda *a: chunked_masked_nll(*a, chunk_size=4).loss),
            jax.jit(lambda *a: chunked_masked_nll(*a, chunk_size=4, vocab_chunk_size=8).loss)]
  for fn in jitted:
    assert np.isnan(fn(hidden, head, bad, mask))


# --- chunked_masked_nll == masked_nll ----------------------------------------------------------------------

@pytest.mark.parametrize("head_layout", ["hv", "vh"])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("vocab_chunk_size", [None, 8])
def test_chunked_matches_naive_value_and_grads(head_layout, chunk_size, vocab_chunk_size):
  hidden, head_hv, targets, mask = random_problem(6)
  head = head_hv if head_layout == "hv" else np.ascontiguousarray(head_hv.T)

  def chunked(h, w):
    return chunked_masked_nll(h, w, targets, mask, head_layout=head_layout, chunk_size=chunk_size,
                              vocab_chunk_size=vocab_chunk_size).loss

  expected, expected_grads = naive_value_and_grads(hidden, head, targets, mask, head_layout=head_layout)
  got, got_grads = jax.jit(jax.value_and_grad(chunked, (0, 1)))(hidden, head)
  assert_close(got, expected)
  for g, e in zip(got_grads, expected_grads):
    assert_close(g, e)


def test_chunked_returns_the_same_sums_as_naive():
  hidden, head, targets, mask = random_problem(7)
  logits = jnp.einsum("blh,hv->blv", hidden, head)
  expected = masked_nll(logits, targets, mask)
  got = chunked_masked_nll(hidden, head, targets, mask, chunk_size=6)
  assert int(got.num_tokens) == int(expected.num_tokens) == int(mask.sum())
  assert_close(got.nll_sum, expected.nll_sum)


def test_chunked_bf16_hidden_uses_the_head_in_the_compute_dtype():
  """bf16 hidden + fp32 head: the head is cast to bf16 and logits accumulate in fp32, as in Planner.logits."""
  hidden, head, targets, mask = random_problem(8)
  hidden = jnp.asarray(hidden, jnp.bfloat16)
  logits = jnp.einsum("blh,hv->blv", hidden, jnp.asarray(head, jnp.bfloat16), preferred_element_type=jnp.float32)
  expected = masked_nll(logits, targets, mask).loss
  for vocab_chunk_size in (None, 8):
    got = chunked_masked_nll(hidden, head, targets, mask, chunk_size=5, vocab_chunk_size=vocab_chunk_size).loss
    assert got.dtype == jnp.float32
    assert_close(got, expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk_size=0), "chunk_size must be a positive int, got 0"),
    (dict(chunk_size=2.5), "chunk_size must be a positive int"),
    (dict(vocab_chunk_size=0), "vocab_chunk_size must be a positive int"),
    (dict(head_layout="vd"), "head_layout must be one of"),
    (dict(head_layout="vh"), r"head \(16, 29\) does not match hidden size H=16 for head_layout='vh'"),
])
def test_chunked_rejects_bad_arguments(kwargs, match):
  hidden, head, targets, mask = random_problem(9)
  with pytest.raises(ValueError, match=match):
    chunked_masked_nll(hidden, head, targets, mask, **kwargs)


def test_chunked_rejects_mismatched_targets_and_mask():
  hidden, head, targets, mask = random_problem(10)
  with pytest.raises(ValueError, match=r"targets has shape \(2, 12\), expected \(2, 13\)"):
    chunked_masked_nll(hidden, head, targets[:, :-1], mask)
  with pytest.raises(ValueError, match=r"mask has shape \(1, 13\), expected \(2, 13\)"):
    chunked_masked_nll(hidden, head, targets, mask[:1])
  with pytest.raises(ValueError, match="hidden must be a float"):
    chunked_masked_nll(hidden[0], head, targets, mask)


# --- peak memory (compile only) ---------------------------------------------------------------------------

def test_chunked_loss_never_materialises_the_full_logits():
  """Compiled temp memory of value_and_grad: naive holds [L, V] fp32 logits, chunked stays below one such array,
  and with vocabulary tiles below one chunk's [chunk, V] logits."""
  b, l, h, v, chunk = 1, 4096, 64, 32768, 512
  args = (jax.ShapeDtypeStruct((b, l, h), jnp.float32), jax.ShapeDtypeStruct((h, v), jnp.float32),
          jax.ShapeDtypeStruct((b, l), jnp.int32), jax.ShapeDtypeStruct((b, l), jnp.bool_))

  def temp_bytes(loss_fn):
    compiled = jax.jit(jax.value_and_grad(loss_fn, (0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full_logits = l * v * 4
  chunk_logits = chunk * v * 4
  naive = temp_bytes(naive_loss)
  chunked = temp_bytes(lambda *a: chunked_masked_nll(*a, chunk_size=chunk).loss)
  tiled = temp_bytes(lambda *a: chunked_masked_nll(*a, chunk_size=chunk, vocab_chunk_size=4096).loss)
  assert naive > full_logits
  assert chunked < full_logits
  assert tiled < chunk_logits


# --- the real planner ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_planner_chunked_loss_matches_loss_on_logits(tied):
  config = PlannerConfig.tiny(vocab_size=97, num_layers=1, tie_word_embeddings=tied)
  model = Planner(config)
  rng = np.random.default_rng(11)
  ids = rng.integers(0, config.vocab_size, (2, 24)).astype(np.int32)
  loss_mask = np.zeros((2, 24), bool)
  loss_mask[:, 9:] = True
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(ids)))["params"]
  targets, target_mask = next_token_targets(ids, loss_mask)

  def naive(p):
    return masked_nll(model.apply({"params": p}, ids), targets, target_mask).loss

  def chunked(p):
    hidden = model.apply({"params": p}, ids, method="hidden_states")
    head, layout = (p["embed"]["embedding"], "vh") if tied else (p["lm_head"]["kernel"], "hv")
    return chunked_masked_nll(hidden, head, targets, target_mask, head_layout=layout, chunk_size=7).loss

  expected, expected_grads = jax.jit(jax.value_and_grad(naive))(params)
  got, got_grads = jax.jit(jax.value_and_grad(chunked))(params)
  assert ("lm_head" in params) != tied
  assert_close(got, expected)
  jax.tree.map(assert_close, got_grads, expected_grads)
