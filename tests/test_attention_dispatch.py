"""Attention dispatch: "auto" by platform and shape with logged fallbacks, fused-RoPE arguments, the jax.nn / cuDNN
path's masks, and the Pallas kernel running inside a sharded jitted step (shard_map, compiled for a TPU mesh)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from planx_jax.kernels.attention import attention, dispatch, resolve_impl, split_cross_attention, xla_attention
from planx_jax.kernels.attention.reference import xla_split_cross_attention
from planx_jax.kernels.attention.rope import apply_rope


def _rand(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _tables(batch, length, half, seed):
  angles = _rand((batch, length, half), seed) * 3
  return jnp.cos(angles), jnp.sin(angles)


@pytest.fixture(autouse=True)
def _fresh_fallback_log():
  dispatch._LOGGED.clear()


def test_auto_on_cpu_is_xla():
  assert resolve_impl("auto") == "xla"
  assert resolve_impl("auto", "cpu", q=jnp.zeros((1, 512, 2, 128))) == "xla"


def test_auto_on_tpu_uses_the_kernel_and_logs_why_it_falls_back(caplog):
  assert resolve_impl("auto", "tpu", q=jax.ShapeDtypeStruct((1, 4096, 12, 128), jnp.bfloat16)) == "pallas"
  with caplog.at_level(logging.WARNING, logger="planx_jax.kernels.attention.dispatch"):
    assert resolve_impl("auto", "tpu", q=jax.ShapeDtypeStruct((1, 729, 16, 72), jnp.bfloat16)) == "xla"
    assert resolve_impl("auto", "tpu", q=jax.ShapeDtypeStruct((4, 1, 12, 128), jnp.bfloat16)) == "xla"
    assert resolve_impl("auto", "tpu", q=jax.ShapeDtypeStruct((1, 729, 16, 72), jnp.bfloat16)) == "xla"
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2, messages  # the repeated head_dim-72 fallback is logged once
  assert "head_dim 72 is not a multiple of 128" in messages[0]
  assert "1 queries are fewer than one 128-row block" in messages[1]


def test_auto_on_gpu_prefers_cudnn_and_logs_its_limits(caplog):
  bf16 = jax.ShapeDtypeStruct((1, 4096, 16, 128), jnp.bfloat16)
  assert resolve_impl("auto", "gpu", q=bf16, k=bf16) == "cudnn"
  with caplog.at_level(logging.WARNING, logger="planx_jax.kernels.attention.dispatch"):
    f32 = jax.ShapeDtypeStruct((1, 64, 4, 128), jnp.float32)
    assert resolve_impl("auto", "gpu", q=f32, k=f32) == "xla"
    wide = jax.ShapeDtypeStruct((1, 64, 4, 320), jnp.bfloat16)
    assert resolve_impl("auto", "gpu", q=wide, k=wide) == "xla"
    assert resolve_impl("auto", "gpu", q=bf16, k=bf16, q_offset=jnp.int32(3)) == "xla"
  text = " | ".join(r.getMessage() for r in caplog.records)
  assert "bf16 / fp16" in text and "head_dim <= 256" in text and "query offset" in text


def test_unknown_impl_and_style_are_errors():
  q = _rand((1, 4, 2, 8), 0)
  with pytest.raises(ValueError, match="unknown attention_impl 'splash'; available: auto, xla, pallas"):
    attention(q, q, q, impl="splash")
  with pytest.raises(ValueError, match="unknown rope_style 'neox'"):
    attention(q, q, q, rope=_tables(1, 4, 4, 1), rope_style="neox")
  with pytest.raises(ValueError, match="same positions"):
    attention(q, _rand((1, 6, 2, 8), 1), _rand((1, 6, 2, 8), 2), rope=_tables(1, 4, 4, 1))


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rope_argument_rotates_q_and_k_like_the_model_did(style):
  """With impl "xla" the fused-RoPE call is bitwise the old rotate-then-attend path."""
  q, k, v = _rand((2, 9, 4, 16), 1), _rand((2, 9, 2, 16), 2), _rand((2, 9, 2, 16), 3)
  tables = _tables(2, 9, 8, 4)
  got = attention(q, k, v, rope=tables, rope_style=style, causal=True, impl="xla")
  expected = xla_attention(apply_rope(q, tables, style), apply_rope(k, tables, style), v, causal=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  kernel = attention(q, k, v, rope=tables, rope_style=style, causal=True, impl="pallas_interpret")
  np.testing.assert_allclose(np.asarray(kernel), np.asarray(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["causal", "segments", "offset", "gqa_full"])
def test_jax_nn_path_matches_the_reference(case):
  """The GPU path's mask building (run here with jax.nn's XLA implementation): same semantics as the reference,
  rows with no visible key included."""
  b, t, s, n, kv, d = 2, 7, 7, 4, 2, 8
  kwargs = {}
  if case == "causal":
    kwargs = dict(causal=True)
  elif case == "segments":
    kwargs = dict(causal=True, q_segment_ids=jnp.array([[1, 1, 2, 2, 2, 3, 3]] * 2),
                  kv_segment_ids=jnp.array([[1, 1, 2, 2, 2, 0, 0]] * 2))  # segment 3 has no visible key
  elif case == "offset":
    t, kwargs = 3, dict(causal=True, q_offset=jnp.array([2, 4]))
  q, k, v = _rand((b, t, n, d), 5), _rand((b, s, kv, d), 6), _rand((b, s, kv, d), 7)
  got = attention(q, k, v, impl="jax_nn", **kwargs)
  np.testing.assert_allclose(np.asarray(got), np.asarray(xla_attention(q, k, v, **kwargs)), atol=1e-6, rtol=0)


def test_split_cross_dispatch_rotates_the_semantic_segment_only():
  q, k_text, v_text = _rand((2, 10, 3, 16), 1), _rand((2, 5, 3, 16), 2), _rand((2, 5, 3, 16), 3)
  k_sem, v_sem = _rand((2, 6, 3, 16), 4), _rand((2, 6, 3, 16), 5)
  q_rope, sem_rope = _tables(1, 10, 8, 6), _tables(2, 6, 8, 7)
  mask = jnp.array([[True] * 6, [True, False] * 3])
  expected = xla_split_cross_attention(q, apply_rope(q, q_rope, "interleaved"), k_text, v_text,
                                       apply_rope(k_sem, sem_rope, "interleaved"), v_sem, sem_mask=mask)
  for impl in ("xla", "auto", "pallas_interpret"):
    got = split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=q_rope, k_sem_rope=sem_rope, sem_mask=mask,
                                impl=impl)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=0)


def test_empty_semantic_segment_is_text_only_attention():
  q, k_text, v_text = _rand((1, 4, 2, 8), 1), _rand((1, 3, 2, 8), 2), _rand((1, 3, 2, 8), 3)
  empty = jnp.zeros((1, 0, 2, 8))
  got = xla_split_cross_attention(q, q, k_text, v_text, empty, empty)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(xla_attention(q, k_text, v_text)))


@pytest.fixture(scope="module")
def tpu_mesh():
  from jax.experimental import topologies

  devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
  return Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))


def _compile_under_mesh(mesh, fn, *shapes):
  """Lowers and compiles fn for the TPU mesh; arguments (shape, dtype[, spec]) are split on their leading (batch)
  dim unless a PartitionSpec is given."""
  args = [jax.ShapeDtypeStruct(s[0], s[1], sharding=NamedSharding(mesh, s[2] if len(s) > 2 else P("data")))
          for s in shapes]
  with jax.set_mesh(mesh):
    return jax.jit(fn).lower(*args).compile()


def test_kernel_runs_inside_a_sharded_jitted_step(tpu_mesh):
  """Under an active mesh the dispatch wraps the Mosaic kernel in shard_map (batch over data, heads over tensor):
  forward and backward of the planner-shaped call compile for a 2x2 v5e mesh with no all-gather of activations."""
  bf16 = jnp.bfloat16

  def step(q, k, v, angles, segments):
    tables = (jnp.cos(angles), jnp.sin(angles))

    def loss(q, k, v):
      out = attention(q, k, v, rope=tables, causal=True, q_segment_ids=segments, kv_segment_ids=segments,
                      impl="pallas", block_sizes="v5e")
      return jnp.sum(out.astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  compiled = _compile_under_mesh(tpu_mesh, step, ((4, 1024, 12, 128), bf16), ((4, 1024, 2, 128), bf16),
                                 ((4, 1024, 2, 128), bf16), ((4, 1024, 64), jnp.float32), ((4, 1024), jnp.int32))
  hlo = compiled.as_text()
  assert hlo.count("tpu_custom_call") >= 3  # forward, dK/dV and dQ kernels
  assert "all-gather" not in hlo


def test_split_cross_kernel_runs_inside_a_sharded_jitted_step(tpu_mesh):
  bf16 = jnp.bfloat16

  def step(q, k_text, v_text, k_sem, v_sem, mask):
    tables = (jnp.ones((1, q.shape[1], 64)), jnp.zeros((1, q.shape[1], 64)))
    sem_tables = (jnp.ones((1, k_sem.shape[1], 64)), jnp.zeros((1, k_sem.shape[1], 64)))
    return split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=tables, k_sem_rope=sem_tables,
                                 sem_mask=mask, impl="pallas", block_sizes="v5e")

  compiled = _compile_under_mesh(tpu_mesh, step, ((2, 1024, 24, 128), bf16), ((2, 512, 24, 128), bf16),
                                 ((2, 512, 24, 128), bf16), ((2, 81, 24, 128), bf16), ((2, 81, 24, 128), bf16),
                                 ((2, 81), jnp.bool_))
  assert "tpu_custom_call" in compiled.as_text()


def test_codebook_kernel_runs_inside_a_sharded_jitted_step(tpu_mesh):
  """TA-Tok's lookup under a mesh: rows split over the data axis, the codebook replicated, no all-gather of z."""
  from planx_jax.kernels.codebook import codebook_argmax

  compiled = _compile_under_mesh(tpu_mesh, lambda z, c: codebook_argmax(z, c, impl="pallas", tile_size=2048),
                                 ((4, 729, 1536), jnp.float32), ((16384, 1536), jnp.float32, P()))
  hlo = compiled.as_text()
  assert "tpu_custom_call" in hlo and "all-gather" not in hlo
