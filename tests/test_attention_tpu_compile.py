"""TPU compilation of the Pallas attention kernels on a CPU machine (libtpu topologies, no TPU): every variant,
forward and backward, at Plan-X's real shapes inside shard_map for v5e / v5p / v6e; FLOPs and block-size errors.

Not numerics: the interpret-mode parity tests check those. Nothing here runs a kernel.
"""

import math
import os
import re

# Other pytest processes on this machine may hold libtpu's lockfile; compile-only use needs no exclusive TPU.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from planx_jax.kernels.attention.pallas_attention import (GENERATION_BLOCK_SIZES, BlockSizes,  # noqa: E402
                                                          pallas_attention, pallas_split_cross_attention)

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
BF16 = jnp.bfloat16
D = 128
VIDEO_TOKENS = 27280  # Wan2.2 TI2V-5B, 121 frames at 1280 x 704: 31 latent frames x 22 x 40 patches
TEXT_KEYS, SEM_KEYS = 512, 810  # umT5 states (padded to 512); 10 keyframes x 81 TA-Tok tokens
ALL_CHIPS = ("data", "tensor")  # batch split over both axes
# Matmuls of one pass over the [T, S] logits: forward QK^T and PV; backward recomputes QK^T in both of its
# kernels (dK/dV: QK^T, dV, dP, dK; dQ: QK^T, dP, dQ).
FORWARD_MATMULS, BACKWARD_MATMULS = 2, 7


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def generation(request):
  return request.param


@pytest.fixture(scope="module")
def mesh(generation):
  """2 x 2 chips of `generation`: axes ("data", "tensor")."""
  devices = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[generation]).devices
  return Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))


def _sds(mesh, shape, dtype, spec):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _padded(length: int, block: int, block_bwd: int) -> int:
  """Kernel length of a sequence: one 128-aligned block when it fits in both blocks, else whole blocks."""
  if _round_up(length, 128) <= min(block, block_bwd):
    return _round_up(length, 128)
  return _round_up(length, math.lcm(block, block_bwd))


def _causal_block_pairs(t: int, s: int, bq: int, bk: int) -> int:
  """(query block, key block) pairs with a key at or before the block's last query (diagonal blocks count
  whole)."""
  return sum(1 for i in range(t // bq) for j in range(s // bk) if j * bk <= (i + 1) * bq - 1)


def _logits(case, blocks: BlockSizes, bq: int, bk: int) -> int:
  """Logits one kernel pass computes per head: padded T x S, or (causal) the whole blocks it visits."""
  t, s = case["t_pad"](blocks), case["s_pad"](blocks)
  return _causal_block_pairs(t, s, bq, bk) * bq * bk if case["causal"] else t * s


def _kernel_flops(case, blocks: BlockSizes, backward: bool) -> int:
  """Per-device matmul FLOPs of the kernels (2 * D per logit and matmul) on padded, block-granular logits."""
  logits = FORWARD_MATMULS * _logits(case, blocks, blocks.block_q, blocks.block_kv)
  if backward:
    logits += BACKWARD_MATMULS * _logits(case, blocks, blocks.block_q_bwd, blocks.block_kv_bwd)
  return 2 * D * logits * case["local_batch"] * case["local_heads"]


def _useful_flops(case, backward: bool) -> int:
  """Per-device FLOPs of attention itself, FlashAttention's count: 4 B N T S D forward (causal: the T (T + 1) / 2
  visible logits), backward 2.5 times that."""
  t, s = case["t"], case["s"]
  logits = t * (t + 1) // 2 if case["causal"] else t * s
  forward = 4 * D * logits * case["local_batch"] * case["local_heads"]
  return forward * 7 // 2 if backward else forward


def _planner(mesh, generation):
  """Planner 1.5B: 4096 packed tokens, 12 query / 2 kv heads, causal, half-split RoPE; batch over data, heads
  over tensor."""
  b, t, act, row = 2, 4096, P("data", None, "tensor"), P("data")
  args = [_sds(mesh, (b, t, 12, D), BF16, act), _sds(mesh, (b, t, 2, D), BF16, act),
          _sds(mesh, (b, t, 2, D), BF16, act), _sds(mesh, (b, t, D // 2), jnp.float32, row),
          _sds(mesh, (b, t, D // 2), jnp.float32, row), _sds(mesh, (b, t), jnp.int32, row)]

  def fn(q, k, v, cos, sin, segments):
    return pallas_attention(q, k, v, q_rope=(cos, sin), k_rope=(cos, sin), rope_style="half", causal=True,
                            q_segment_ids=segments, kv_segment_ids=segments, block_sizes=generation)

  return dict(fn=fn, args=args, differentiable=3, specs=(act,) * 3 + (row,) * 3, out=act, causal=True,
              local_batch=1, local_heads=6, t=t, s=t, t_pad=lambda bs: _padded(t, bs.block_q, bs.block_q_bwd),
              s_pad=lambda bs: _padded(t, bs.block_kv, bs.block_kv_bwd))


def _dit_self(mesh, generation):
  """DiT self-attention: 27280 video tokens, 24 heads, interleaved 3D RoPE; batch over all four chips."""
  b, t, act = 4, VIDEO_TOKENS, P(ALL_CHIPS)
  table = _sds(mesh, (1, t, D // 2), jnp.float32, P())
  args = [_sds(mesh, (b, t, 24, D), BF16, act)] * 3 + [table, table]

  def fn(q, k, v, cos, sin):
    return pallas_attention(q, k, v, q_rope=(cos, sin), k_rope=(cos, sin), rope_style="interleaved",
                            block_sizes=generation)

  return dict(fn=fn, args=args, differentiable=3, specs=(act,) * 3 + (P(),) * 2, out=act, causal=False,
              local_batch=1, local_heads=24, t=t, s=t, t_pad=lambda bs: _padded(t, bs.block_q, bs.block_q_bwd),
              s_pad=lambda bs: _padded(t, bs.block_kv, bs.block_kv_bwd))


def _split_cross(mesh, generation):
  """Plan-X split cross-attention: 27280 queries, 512 text + 810 semantic keys, 24 heads, semantic mask; batch
  over data, heads over tensor."""
  b, t, act, row = 2, VIDEO_TOKENS, P("data", None, "tensor"), P("data")
  q_table = _sds(mesh, (1, t, D // 2), jnp.float32, P())
  sem_table = _sds(mesh, (b, SEM_KEYS, D // 2), jnp.float32, row)
  args = [_sds(mesh, (b, t, 24, D), BF16, act)] + [_sds(mesh, (b, TEXT_KEYS, 24, D), BF16, act)] * 2 + [
      _sds(mesh, (b, SEM_KEYS, 24, D), BF16, act)] * 2 + [q_table, q_table, sem_table, sem_table,
                                                          _sds(mesh, (b, SEM_KEYS), jnp.bool_, row)]

  def fn(q, k_text, v_text, k_sem, v_sem, qc, qs, kc, ks, sem_mask):
    return pallas_split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=(qc, qs), k_sem_rope=(kc, ks),
                                        sem_mask=sem_mask, block_sizes=generation)

  def s_pad(bs):  # the text segment is padded to whole key blocks on its own, then the semantic one
    text = _padded(TEXT_KEYS, bs.block_kv, bs.block_kv_bwd)
    text_block = text if text <= min(bs.block_kv, bs.block_kv_bwd) else math.lcm(bs.block_kv, bs.block_kv_bwd)
    return text + _round_up(SEM_KEYS, text_block)

  return dict(fn=fn, args=args, differentiable=5, specs=(act,) * 5 + (P(),) * 2 + (row,) * 3, out=act,
              causal=False, local_batch=1, local_heads=12, t=t, s=TEXT_KEYS + SEM_KEYS,
              t_pad=lambda bs: _padded(t, bs.block_q, bs.block_q_bwd), s_pad=s_pad)


VARIANTS = {"planner": _planner, "dit_self": _dit_self, "split_cross": _split_cross}


def _per_device_bytes(structs) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in structs)


def _compile(case, mesh, backward: bool):
  kernel = jax.shard_map(case["fn"], mesh=mesh, in_specs=case["specs"], out_specs=case["out"], check_vma=False)
  differentiable = case["differentiable"]  # q, k, v (split cross: q, k_text, v_text, k_sem, v_sem)
  if backward:
    def loss(*args):
      return jnp.sum(kernel(*args).astype(jnp.float32))

    fn = jax.grad(loss, argnums=tuple(range(differentiable)))
  else:
    fn = kernel
  return jax.jit(fn).lower(*case["args"]).compile(), case["args"][:differentiable]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_compiles_for_tpu_with_the_analytic_flops(mesh, generation, variant, backward):
  case = VARIANTS[variant](mesh, generation)
  compiled, differentiable = _compile(case, mesh, backward)
  flops = compiled.cost_analysis()["flops"]
  expected = _kernel_flops(case, GENERATION_BLOCK_SIZES[generation], backward)
  # The kernels' matmuls dominate; XLA's own ops (padding, layout, the backward's row dot) add well under 1%.
  assert expected <= flops <= 1.01 * expected, (flops, expected)
  assert flops >= _useful_flops(case, backward)
  memory = compiled.memory_analysis()
  # Per-device buffers: each chip holds its shard (TPU tiling may pad a buffer by a few KiB).
  outputs = differentiable if backward else case["args"][:1]
  for size, structs in ((memory.argument_size_in_bytes, case["args"]), (memory.output_size_in_bytes, outputs)):
    assert 0 <= size - _per_device_bytes(structs) <= 0.01 * _per_device_bytes(structs)
  # Flash attention never holds the logits: temp stays under half of one fp32 copy of this device's [N, T, S].
  logits_bytes = 4 * case["local_batch"] * case["local_heads"] * case["t"] * case["s"]
  assert 0 <= memory.temp_size_in_bytes < logits_bytes / 2


ILLEGAL_BLOCKS = [(BlockSizes(block_q=100), "block_q"), (BlockSizes(block_kv=200), "block_kv"),
                  (BlockSizes(block_kv_bwd=64), "block_kv_bwd")]


@pytest.mark.parametrize("blocks,field", ILLEGAL_BLOCKS, ids=[f for _, f in ILLEGAL_BLOCKS])
def test_illegal_block_sizes_are_rejected_before_any_trace(blocks, field):
  # ShapeDtypeStructs, not arrays: reaching any JAX operation would fail with a different error.
  q = jax.ShapeDtypeStruct((1, 1024, 2, D), BF16)
  value = getattr(blocks, field)
  message = rf"BlockSizes\.{field}={value} is illegal for the TPU kernel: blocks must be multiples of 128"
  with pytest.raises(ValueError, match=message):
    pallas_attention(q, q, q, block_sizes=blocks)
  with pytest.raises(ValueError, match=message):
    pallas_split_cross_attention(q, q, q, q, q, q_rope=None, k_sem_rope=None, block_sizes=blocks)


def test_illegal_block_sizes_surface_as_our_error_when_lowering_in_shard_map(mesh, generation):
  case = _dit_self(mesh, generation)

  def fn(q, k, v, cos, sin):
    return pallas_attention(q, k, v, q_rope=(cos, sin), k_rope=(cos, sin), rope_style="interleaved",
                            block_sizes=BlockSizes(block_q=100))

  kernel = jax.shard_map(fn, mesh=mesh, in_specs=case["specs"], out_specs=case["out"], check_vma=False)
  with pytest.raises(ValueError, match=r"BlockSizes\.block_q=100 is illegal for the TPU kernel"):
    jax.jit(kernel).lower(*case["args"])


def test_head_dim_72_is_rejected_for_mosaic_and_accepted_in_interpret_mode():
  q = jax.ShapeDtypeStruct((1, 256, 2, 72), jnp.float32)
  with pytest.raises(ValueError, match=r"head_dim 72 is not a multiple of 128"):
    pallas_attention(q, q, q)
  with pytest.raises(ValueError, match=r"head_dim 72 is not a multiple of 128"):
    pallas_split_cross_attention(q, q, q, q, q, q_rope=None, k_sem_rope=None)
  # The 128 rules are Mosaic's: interpret mode takes head_dim 72 and 8-row blocks.
  blocks = BlockSizes(block_q=100, block_kv=200, block_q_bwd=8, block_kv_bwd=16)
  out = jax.eval_shape(lambda x: pallas_attention(x, x, x, block_sizes=blocks, interpret=True), q)
  assert out.shape == q.shape and out.dtype == q.dtype


def test_bench_attention_quick_prints_timing_and_the_tpu_roofline(capsys):
  from planx_jax.tools import bench_attention

  bench_attention.main(["--quick", "--iters", "1", "--variants", "planner,split_cross", "--generations", "v5e"])
  out = capsys.readouterr().out
  number = r"([\d.e+-]+)"
  timing = re.findall(rf"^(planner|split_cross)\s+(ours \(auto\)|jax.nn xla)\s+{number}\s+{number}\s+{number}x\s+"
                      rf"{number}\s+{number}\s+{number}x", out, re.M)
  assert [row[:2] for row in timing] == [("planner", "ours (auto)"), ("planner", "jax.nn xla"),
                                         ("split_cross", "ours (auto)"), ("split_cross", "jax.nn xla")]
  # Planner quick shape: 4 heads, 256 causal queries; fwd FLOPs 4 N D T (T + 1) / 2, fwd+bwd 3.5 times that.
  planner_flops = 4 * 4 * D * 256 * 257 / 2
  for row in timing[:2]:
    for ms, tflops, flops in ((row[2], row[3], planner_flops), (row[5], row[6], 3.5 * planner_flops)):
      assert float(tflops) == pytest.approx(flops / (float(ms) * 1e-3) / 1e12, rel=2e-3)
  for ms, ratio in ((2, 4), (5, 7)):  # fwd, fwd+bwd: the printed ratio is the row's time over ours
    assert float(timing[1][ratio]) == pytest.approx(float(timing[1][ms]) / float(timing[0][ms]), rel=2e-3, abs=1e-3)
  assert float(timing[0][4]) == 1.0 and float(timing[0][7]) == 1.0
  assert re.search(r"^\s+n/a \(.+\): planner jax.nn cudnn fwd", out, re.M)  # no cuDNN on CPU: a reason, no crash
  tpu = re.findall(rf"^v5e\s+(planner|split_cross)\s+(fwd\+bwd|fwd)\s+{number}\s+(\d+)%\s+{number}\s+{number}\s+"
                   rf"(\d+)\s+{number}\s+(compute|memory)", out, re.M)
  assert [row[:2] for row in tpu] == [("planner", "fwd"), ("planner", "fwd+bwd"), ("split_cross", "fwd"),
                                      ("split_cross", "fwd+bwd")]
  for _, _, gflop, _, gbytes, _, _, ms, bound in tpu:
    compute_ms, memory_ms = float(gflop) / 197, float(gbytes) / 820 * 1e3  # v5e: 197 TFLOP/s, 820 GB/s
    assert float(ms) == pytest.approx(max(compute_ms, memory_ms), rel=2e-3)
    assert bound == ("compute" if compute_ms >= memory_ms else "memory")
