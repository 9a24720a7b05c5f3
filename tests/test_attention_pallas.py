"""Pallas flash attention in interpret mode (CPU) against the XLA reference: outputs and gradients of every variant.

Causal GQA with half-split RoPE (planner), bidirectional interleaved RoPE (DiT) and the split text / semantic
cross-attention, in fp32 and bf16, with several blocks per axis; not TPU compilation and not the dispatch.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.kernels.attention.pallas_attention import BlockSizes, pallas_attention, pallas_split_cross_attention
from planx_jax.kernels.attention.reference import xla_attention, xla_split_cross_attention
from planx_jax.kernels.attention.rope import apply_rope
from planx_jax.models.rope import grid_positions, inv_frequencies, rope3d_tables, video_rope_tables

BATCH = 2
# Interpret-mode kernels become large XLA:CPU loop programs whose compilation dominates the run time; the same
# programs built with the cheapest backend optimisation compile about 1.5x as fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# (atol, rtol) of the output and of the gradients: fp32 against the reference; bf16 against the reference in fp32
# on the same bf16-rounded inputs (and RoPE-rotated q, k rounded to bf16, as the kernel feeds them to its matmuls).
# A bf16 output is itself rounded by up to half an ulp, 2 ** -8 of its magnitude: the relative part of the bf16
# output tolerance (alone it reaches 7e-3 at |o| > 2).
TOLERANCES = {jnp.float32: ((1e-5, 0.0), (1e-5, 0.0)), jnp.bfloat16: ((3e-3, 2.0**-8), (5e-2, 0.0))}


def _values_and_grads(fn, args, cotangent):
  """(fn(*args), gradients of sum(fn(*args) * cotangent) wrt every arg), from one compiled program."""

  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangent.astype(out.dtype))

  return jax.jit(run, compiler_options=FAST_COMPILE)(*args)


def _check(name: str, got, expected, tolerance: tuple[float, float]):
  got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
  assert got.shape == expected.shape, (name, got.shape, expected.shape)
  assert np.all(np.isfinite(got)), name
  atol, rtol = tolerance
  np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol, err_msg=name)


def _check_all(names, kernel, reference, dtype):
  """Compares (output, gradients) of the kernel with those of the reference at the tolerances of `dtype`."""
  fwd_tol, grad_tol = TOLERANCES[dtype]
  _check("output", kernel[0], reference[0], fwd_tol)
  for name, got, expected in zip(names, kernel[1], reference[1], strict=True):
    _check(f"d{name}", got, expected, grad_tol)


def _rotate(x, tables, style: str, dtype):
  """apply_rope in `dtype` (fp32 math, result rounded to `dtype`), returned in fp32: the reference's rotation."""
  return apply_rope(x.astype(dtype), tables, style).astype(jnp.float32)


def _normal(rng, shape, dtype):
  """N(0, 1) rounded to `dtype`, and the same values in fp32 (the reference's inputs); NumPy arrays."""
  x = rng.standard_normal(shape).astype(np.float32).astype(dtype)
  return x, x.astype(np.float32)


def _cos_sin(angles):
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ------------------------------------------------------------------------------------------------ self-attention


@dataclasses.dataclass(frozen=True)
class SelfCase:
  """One self-attention variant: shapes, masking, RoPE layout and kernel block sizes."""

  heads: int
  kv_heads: int
  q_len: int
  kv_len: int
  causal: bool
  rope: str | None  # "half" (Qwen2 positions), "interleaved" (random angles), "video" (3D grid), None (no RoPE)
  offset: tuple[int, ...] = (0,)  # q_offset: one value, or one per batch row
  segments: str | None = None  # "packed": contiguous segments; "orphan": some queries' segment has no key
  blocks: BlockSizes = BlockSizes(16, 16, 8, 16)
  head_dim: int = 16
  grid: tuple[int, int, int] | None = None  # the "video" token grid (F, H, W), F * H * W == q_len == kv_len


SELF_CASES = {
    "causal_half_gqa1": SelfCase(2, 2, 37, 37, True, "half"),
    "causal_half_gqa2_packed": SelfCase(4, 2, 37, 37, True, "half", segments="packed",
                                        blocks=BlockSizes(32, 32, 16, 32)),
    "causal_half_gqa7": SelfCase(7, 1, 37, 37, True, "half", blocks=BlockSizes(16, 32, 32, 16)),
    "causal_half_offset": SelfCase(4, 2, 13, 37, True, "half", offset=(24,), blocks=BlockSizes(8, 16, 8, 8)),
    "causal_half_batch_offsets": SelfCase(4, 2, 13, 37, True, "half", offset=(24, 5)),
    "full_video_interleaved": SelfCase(3, 3, 45, 45, False, "video", blocks=BlockSizes(16, 32, 16, 16),
                                       head_dim=32, grid=(3, 3, 5)),
    "full_interleaved_gqa2": SelfCase(4, 2, 21, 50, False, "interleaved"),
    "full_plain_packed": SelfCase(4, 2, 37, 37, False, None, segments="packed", blocks=BlockSizes(32, 16, 16, 32)),
    "full_interleaved_orphan_queries": SelfCase(2, 1, 29, 29, False, "interleaved", segments="orphan"),
}


def _packed_ids(rng, length):
  """[B, length] int32 contiguous segment ids 0, 1, 2, ... (runs of 1 to 12 tokens)."""
  return np.stack([np.repeat(np.arange(length), rng.integers(1, 13, length))[:length] for _ in range(BATCH)])


def _self_tables(case: SelfCase, rng):
  """(q tables, k tables), each (cos, sin) [B or 1, L, D/2] fp32; None without RoPE."""
  d = case.head_dim
  if case.rope == "half":
    q_pos = np.asarray(case.offset)[:, None] + np.arange(case.q_len)  # [B or 1, T]: the queries' slots
    k_pos = np.arange(case.kv_len)[None]  # [1, S]
    return tuple(_cos_sin(pos[..., None] * inv_frequencies(d, 10000.0)) for pos in (q_pos, k_pos))
  if case.rope == "interleaved":
    return tuple(_cos_sin(3 * rng.standard_normal((BATCH, n, d // 2))) for n in (case.q_len, case.kv_len))
  if case.rope == "video":
    tables = tuple(table[None] for table in video_rope_tables(case.grid, d))  # [1, L, D/2]
    return tables, tables
  return None, None


def _self_inputs(case: SelfCase, dtype, seed: int):
  rng = np.random.default_rng(seed)
  d = case.head_dim
  q = _normal(rng, (BATCH, case.q_len, case.heads, d), dtype)
  k = _normal(rng, (BATCH, case.kv_len, case.kv_heads, d), dtype)
  v = _normal(rng, (BATCH, case.kv_len, case.kv_heads, d), dtype)
  cotangent = _normal(rng, (BATCH, case.q_len, case.heads, d), dtype)
  ids = None
  if case.segments is not None:
    kv_ids = _packed_ids(rng, case.kv_len)
    q_ids = kv_ids.copy()
    if case.segments == "orphan":
      q_ids[0, 3:9] = q_ids[1, 20:] = case.kv_len  # an id no key has
    ids = dict(q_segment_ids=q_ids.astype(np.int32), kv_segment_ids=kv_ids.astype(np.int32))
  return q, k, v, cotangent, _self_tables(case, rng), ids


@pytest.mark.parametrize("name, dtype", [*((name, jnp.float32) for name in SELF_CASES),
                                         ("causal_half_gqa7", jnp.bfloat16), ("full_video_interleaved", jnp.bfloat16)])
def test_self_attention_matches_reference(name, dtype):
  case = SELF_CASES[name]
  q, k, v, cotangent, (q_tables, k_tables), ids = _self_inputs(case, dtype, seed=list(SELF_CASES).index(name))
  style = "half" if case.rope == "half" else "interleaved"
  offset = case.offset[0] if len(case.offset) == 1 else np.asarray(case.offset, np.int32)
  masking = dict(causal=case.causal, q_offset=offset, **(ids or {}))

  def kernel(q, k, v):
    return pallas_attention(q, k, v, q_rope=q_tables, k_rope=k_tables, rope_style=style, block_sizes=case.blocks,
                            interpret=True, **masking)

  def reference(q, k, v):
    if q_tables is not None:
      q, k = _rotate(q, q_tables, style, dtype), _rotate(k, k_tables, style, dtype)
    return xla_attention(q, k, v, **masking)

  got = _values_and_grads(kernel, (q[0], k[0], v[0]), cotangent[0])
  expected = _values_and_grads(reference, (q[1], k[1], v[1]), cotangent[1])
  assert got[0].dtype == dtype
  _check_all("qkv", got, expected, dtype)
  if case.segments == "orphan":  # a query whose segment has no key: zero output, zero dq
    orphans = ids["q_segment_ids"] == case.kv_len  # [B, T]
    assert orphans.sum() == 15
    np.testing.assert_array_equal(np.asarray(got[0])[orphans], 0.0)
    np.testing.assert_array_equal(np.asarray(got[1][0])[orphans], 0.0)


# ------------------------------------------------------------------------------------------------ split cross-attention


def _semantic_tables(sem_len: int, video_grid: tuple[int, int, int], head_dim: int):
  """(cos, sin) [1, sem_len, D/2] at the float positions of a (F, 9, 9) semantic grid scaled onto the video grid."""
  sem_grid = (sem_len // 81, 9, 9)
  scale = np.asarray(video_grid, np.float32) / np.maximum(np.asarray(sem_grid, np.float32), 1)
  positions = (grid_positions(sem_grid) * scale).astype(np.float32)[None]  # [1, S_sem, 3]
  return jax.jit(rope3d_tables, static_argnums=1, compiler_options=FAST_COMPILE)(positions, head_dim)


CROSS_CASES = {
    # name: (semantic keys, sem_mask kind, block sizes)
    "sem0": (0, None, BlockSizes(16, 16, 8, 16)),
    "sem81": (81, None, BlockSizes(16, 16, 8, 16)),
    "sem81_masked": (81, "random", BlockSizes(16, 16, 8, 16)),
    "sem810_masked": (810, "random", BlockSizes(32, 128, 32, 128)),
}
VIDEO_GRID = (2, 3, 4)  # 24 queries
TEXT_LEN, CROSS_HEADS, CROSS_HEAD_DIM = 19, 2, 32


@pytest.mark.parametrize("name, dtype", [*((name, jnp.float32) for name in CROSS_CASES),
                                         ("sem81_masked", jnp.bfloat16)])
def test_split_cross_attention_matches_reference(name, dtype):
  sem_len, mask_kind, blocks = CROSS_CASES[name]
  rng = np.random.default_rng(100 + list(CROSS_CASES).index(name))
  t, n, d = int(np.prod(VIDEO_GRID)), CROSS_HEADS, CROSS_HEAD_DIM
  args = [_normal(rng, (BATCH, length, n, d), dtype) for length in (t, TEXT_LEN, TEXT_LEN, sem_len, sem_len)]
  cotangent = _normal(rng, (BATCH, t, n, d), dtype)
  q_tables = tuple(table[None] for table in video_rope_tables(VIDEO_GRID, d))  # [1, T, D/2]
  sem_tables = _semantic_tables(sem_len, VIDEO_GRID, d)  # [1, S_sem, D/2]
  sem_mask = None
  if mask_kind == "random":  # row 0 drops about a third of the semantic keys, row 1 all of them
    sem_mask = np.stack([rng.random(sem_len) > 0.3, np.zeros(sem_len, bool)])

  def kernel(q, k_text, v_text, k_sem, v_sem):
    return pallas_split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=q_tables, k_sem_rope=sem_tables,
                                        sem_mask=sem_mask, block_sizes=blocks, interpret=True)

  def reference(q, k_text, v_text, k_sem, v_sem):
    if sem_len == 0:  # an empty semantic segment: text-only attention
      return xla_attention(q, k_text, v_text)
    return xla_split_cross_attention(q, _rotate(q, q_tables, "interleaved", dtype), k_text, v_text,
                                     _rotate(k_sem, sem_tables, "interleaved", dtype), v_sem, sem_mask=sem_mask)

  got = _values_and_grads(kernel, [a[0] for a in args], cotangent[0])
  expected = _values_and_grads(reference, [a[1] for a in args], cotangent[1])
  assert got[0].dtype == dtype
  _check_all(["q", "k_text", "v_text", "k_sem", "v_sem"], got, expected, dtype)
  if sem_mask is not None:  # a fully masked semantic segment is text-only attention
    text_only = jax.jit(xla_attention, compiler_options=FAST_COMPILE)(*(a[1][1:] for a in args[:3]))
    _check("text-only row", np.asarray(got[0])[1:], text_only, TOLERANCES[dtype][0])


# ------------------------------------------------------------------------------------------------ bad input


def _zeros(*shape):
  return jnp.zeros(shape, jnp.float32)


def _tables(length: int, half_dim: int = 8):
  return _zeros(1, length, half_dim), _zeros(1, length, half_dim)


_QKV16 = (_zeros(1, 8, 2, 16),) * 3
_CROSS16 = (_zeros(1, 8, 2, 16), _zeros(1, 5, 2, 16), _zeros(1, 5, 2, 16), _zeros(1, 6, 2, 16), _zeros(1, 6, 2, 16))


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda: pallas_attention(_zeros(1, 8, 2, 16), _zeros(1, 8, 2, 8), _zeros(1, 8, 2, 8), interpret=True),
                 "matching q", id="head_dim_mismatch"),
    pytest.param(lambda: pallas_attention(_zeros(1, 8, 3, 16), *_QKV16[1:], interpret=True),
                 "3 query heads are not a multiple of 2", id="heads_not_multiple_of_kv_heads"),
    pytest.param(lambda: pallas_attention(*_QKV16, q_rope=_tables(7), k_rope=_tables(8), interpret=True),
                 r"rope tables must be \[B or 1, 8, D/2\]", id="q_rope_length"),
    pytest.param(lambda: pallas_attention(_QKV16[0], _zeros(1, 9, 2, 16), _zeros(1, 9, 2, 16), q_rope=_tables(8),
                                          k_rope=_tables(8), interpret=True),
                 r"rope tables must be \[B or 1, 9, D/2\]", id="k_rope_length"),
    pytest.param(lambda: pallas_attention(*_QKV16, rope_style="neox", interpret=True), "unknown rope_style",
                 id="rope_style"),
    pytest.param(lambda: pallas_attention(*_QKV16, q_segment_ids=jnp.zeros((1, 8), jnp.int32), interpret=True),
                 "given together", id="q_segment_ids_alone"),
    pytest.param(lambda: pallas_split_cross_attention(*_CROSS16, q_rope=_tables(8), k_sem_rope=_tables(5),
                                                      interpret=True),
                 r"rope tables must be \[B or 1, 6, D/2\]", id="k_sem_rope_length"),
    pytest.param(lambda: pallas_split_cross_attention(*_CROSS16, q_rope=_tables(8), k_sem_rope=_tables(6),
                                                      sem_mask=jnp.ones((1, 5), bool), interpret=True),
                 r"sem_mask must be \[B, S_sem\]", id="sem_mask_shape"),
    pytest.param(lambda: pallas_attention(*(_zeros(1, 8, 2, 128),) * 3, block_sizes=BlockSizes(16, 128, 128, 128)),
                 "block_q=16 is illegal", id="tpu_block_not_multiple_of_128"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
