"""Attention throughput: on a GPU, achieved TFLOP/s of our dispatch against jax.nn.dot_product_attention (XLA and
cuDNN) in the same run; for TPU v5e / v5p / v6e, compiled FLOPs, bytes, temp memory and a roofline per chip.

  python -m planx_jax.tools.bench_attention                # everything; timing needs a GPU backend
  python -m planx_jax.tools.bench_attention --tpu-only     # compile-only TPU table (libtpu; any machine)
  python -m planx_jax.tools.bench_attention --quick        # tiny shapes, seconds (times on CPU too): a smoke run
Asserts nothing. FLOP/s use FlashAttention's count: 4 B N T S D forward (causal: T (T + 1) / 2 logits), backward
2.5 times the forward. Baselines get the same shapes with RoPE applied by XLA first; jax.nn has no packed segments
(the planner baseline is plain causal) nor split queries (the cross baseline reads the rotated query for all keys).
"""

import argparse
import dataclasses
import glob
import importlib.metadata
import os

if not glob.glob("/dev/accel*") and not os.path.exists("/dev/vfio"):  # not a TPU host: compile-only topologies
  for _name, _value in (("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(_name, _value)  # quiets libtpu's host probing; other processes may hold its lockfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from planx_jax.kernels.attention import attention, split_cross_attention  # noqa: E402
from planx_jax.kernels.attention.pallas_attention import (GENERATION_BLOCK_SIZES, pallas_attention,  # noqa: E402
                                                          pallas_split_cross_attention)
from planx_jax.kernels.attention.rope import apply_rope  # noqa: E402
from planx_jax.tools.timing import median_seconds  # noqa: E402

D = 128


@dataclasses.dataclass(frozen=True)
class Shape:
  """One attention call: B, T queries, S keys (text keys for split cross), S_sem semantic keys, N / K heads."""

  batch: int
  q_len: int
  kv_len: int
  heads: int
  kv_heads: int
  causal: bool = False
  rope: str | None = None  # "half" / "interleaved"
  segments: bool = False  # packed sequences (segment ids)
  sem_len: int = 0  # > 0: Plan-X split cross-attention

  def logits(self) -> int:
    """Visible logits per (batch, head) in FlashAttention's count."""
    if self.causal:
      return self.q_len * (self.q_len + 1) // 2
    return self.q_len * (self.kv_len + self.sem_len)

  def model_flops(self, backward: bool) -> float:
    forward = 4.0 * self.batch * self.heads * D * self.logits()
    return 3.5 * forward if backward else forward


# One chip's share of Plan-X's calls (B = 1) and the GPU goal shape (FlashAttention-3's 16k tokens, head_dim 128).
SHAPES = {
    "planner": Shape(1, 4096, 4096, 12, 2, causal=True, rope="half", segments=True),
    "dit_self": Shape(1, 27280, 27280, 24, 24, rope="interleaved"),
    "split_cross": Shape(1, 27280, 512, 24, 24, rope="interleaved", sem_len=810),
    "gpu_goal": Shape(1, 16384, 16384, 16, 16),
}
QUICK_SHAPES = {
    "planner": Shape(1, 256, 256, 4, 2, causal=True, rope="half", segments=True),
    "dit_self": Shape(1, 300, 300, 2, 2, rope="interleaved"),
    "split_cross": Shape(1, 300, 16, 2, 2, rope="interleaved", sem_len=81),
    "gpu_goal": Shape(1, 512, 512, 2, 2),
}
TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# Per chip: bf16 FLOP/s and HBM bytes/s, from jax's Pallas TPU table (jax/_src/pallas/mosaic/tpu_info.py at
# 0.10.2; v5p's 2.46 TB/s is that table's, Google Cloud's v5p page lists 2,765 GB/s).
TPU_PEAKS = {"v5e": (197e12, 820e9), "v5p": (459e12, 2.46e12), "v6e": (920e12, 1.64e12)}
GPU_GOAL_TFLOPS = 550  # issue 6: cuDNN class at head_dim 128, 16k tokens, bf16, forward
# The Pallas kernel streams a rotated tile's RoPE table with it.
TABLE_BYTES = 4  # one packed fp32 cos / sin table (`rope.packed_table`): D values per token


# ------------------------------------------------------------------------------------------------ inputs


def arg_structs(shape: Shape) -> tuple[list[jax.ShapeDtypeStruct], int]:
  """(argument shapes in call order, how many of them are differentiated: the q / k / v tensors)."""
  bf16, f32 = jnp.bfloat16, jnp.float32
  b, t, s = shape.batch, shape.q_len, shape.kv_len

  def act(length, heads):
    return jax.ShapeDtypeStruct((b, length, heads, D), bf16)

  def tables(length, batch=1):
    return [jax.ShapeDtypeStruct((batch, length, D // 2), f32)] * 2

  if shape.sem_len:
    kv = [act(s, shape.heads)] * 2 + [act(shape.sem_len, shape.heads)] * 2
    return [act(t, shape.heads), *kv, *tables(t), *tables(shape.sem_len, b),
            jax.ShapeDtypeStruct((b, shape.sem_len), jnp.bool_)], 5
  args = [act(t, shape.heads), act(s, shape.kv_heads), act(s, shape.kv_heads)]
  if shape.rope:
    args += tables(t, b if shape.segments else 1)
  if shape.segments:
    args.append(jax.ShapeDtypeStruct((b, t), jnp.int32))
  return args, 3


def concrete(structs, shape: Shape, seed: int = 0) -> list[jax.Array]:
  """Random arrays for `structs`: normal activations, tables from random angles, two packed documents, the last
  tenth of the semantic keys masked out (padding)."""
  rng = np.random.default_rng(seed)
  out, angles = [], None
  for struct in structs:
    if struct.dtype == jnp.bool_:
      value = np.arange(struct.shape[1])[None] < struct.shape[1] - struct.shape[1] // 10
      value = np.broadcast_to(value, struct.shape)
    elif struct.dtype == jnp.int32:
      value = np.broadcast_to((np.arange(struct.shape[1]) >= struct.shape[1] * 5 // 8)[None], struct.shape)
    elif len(struct.shape) == 3:  # a (cos, sin) pair: cos first
      if angles is None or angles.shape != struct.shape:
        angles = rng.uniform(0, 2 * np.pi, struct.shape)
        value = np.cos(angles)
      else:
        value, angles = np.sin(angles), None
    else:
      value = rng.standard_normal(struct.shape)
    out.append(jnp.asarray(value, struct.dtype))
  return out


# ------------------------------------------------------------------------------------------------ callables


def dispatch_fn(shape: Shape, impl: str, block_sizes=None):
  """Our seam: `attention` / `split_cross_attention` with `impl`."""
  if shape.sem_len:
    def cross(q, k_text, v_text, k_sem, v_sem, qc, qs, kc, ks, sem_mask):
      return split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=(qc, qs), k_sem_rope=(kc, ks),
                                   rope_style=shape.rope, sem_mask=sem_mask, impl=impl, block_sizes=block_sizes)
    return cross

  def self_attention(q, k, v, *rest):
    rope = tuple(rest[:2]) if shape.rope else None
    segments = rest[-1] if shape.segments else None
    return attention(q, k, v, rope=rope, rope_style=shape.rope or "half", causal=shape.causal,
                     q_segment_ids=segments, kv_segment_ids=segments, impl=impl, block_sizes=block_sizes)
  return self_attention


def pallas_fn(shape: Shape, generation: str):
  """The Pallas TPU kernel itself with `generation`'s block sizes (for compile-only use inside shard_map)."""
  if shape.sem_len:
    def cross(q, k_text, v_text, k_sem, v_sem, qc, qs, kc, ks, sem_mask):
      return pallas_split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=(qc, qs), k_sem_rope=(kc, ks),
                                          rope_style=shape.rope, sem_mask=sem_mask, block_sizes=generation)
    return cross

  def self_attention(q, k, v, *rest):
    rope = tuple(rest[:2]) if shape.rope else None
    segments = rest[-1] if shape.segments else None
    return pallas_attention(q, k, v, q_rope=rope, k_rope=rope, rope_style=shape.rope or "half",
                            causal=shape.causal, q_segment_ids=segments, kv_segment_ids=segments,
                            block_sizes=generation)
  return self_attention


def jax_nn_fn(shape: Shape, implementation: str):
  """jax.nn.dot_product_attention on the same shapes (RoPE in XLA first; see the module docstring)."""
  if shape.sem_len:
    def cross(q, k_text, v_text, k_sem, v_sem, qc, qs, kc, ks, sem_mask):
      q = apply_rope(q, (qc, qs), shape.rope)
      k = jnp.concatenate([k_text, apply_rope(k_sem, (kc, ks), shape.rope)], axis=1)  # [B, S_text + S_sem, N, D]
      v = jnp.concatenate([v_text, v_sem], axis=1)
      lengths = (k_text.shape[1] + jnp.sum(sem_mask, axis=1)).astype(jnp.int32)  # the mask masks a tail
      return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=implementation)
    return cross

  def self_attention(q, k, v, *rest):
    if shape.rope:
      q, k = apply_rope(q, tuple(rest[:2]), shape.rope), apply_rope(k, tuple(rest[:2]), shape.rope)
    return jax.nn.dot_product_attention(q, k, v, is_causal=shape.causal, implementation=implementation)
  return self_attention


def with_backward(fn, differentiable: int):
  """fn(*args) -> (out, d out / d args[:differentiable] . cotangent); the cotangent is the last argument."""
  def forward_backward(*args):
    *args, cotangent = args
    out, pullback = jax.vjp(lambda *d: fn(*d, *args[differentiable:]), *args[:differentiable])
    return out, pullback(cotangent)
  return forward_backward


# ------------------------------------------------------------------------------------------------ GPU timing


def _measure(fn, args, iters: int) -> float | str:
  """Median seconds, or the reason it could not run (unsupported, out of memory)."""
  try:
    compiled = jax.jit(fn)
    return median_seconds(lambda: jax.block_until_ready(compiled(*args)), iters)
  except Exception as error:  # a baseline that cannot run this shape is a result, not a crash
    return f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"


def time_backend(shapes: dict[str, Shape], iters: int) -> None:
  device = jax.devices()[0]
  print(f"\n== timing on {device.platform} ({device.device_kind}), median of {iters} after a warm-up; ours/it: "
        f"our speed over its ==")
  print(f"{'variant':<12} {'impl':<14} {'fwd ms':>10} {'TFLOP/s':>8} {'ours/it':>8} {'fwd+bwd ms':>10} "
        f"{'TFLOP/s':>8} {'ours/it':>8}")
  impls = {"ours (auto)": lambda s: dispatch_fn(s, "auto"), "jax.nn xla": lambda s: jax_nn_fn(s, "xla"),
           "jax.nn cudnn": lambda s: jax_nn_fn(s, "cudnn")}
  notes: dict[str, list[str]] = {}  # reason -> the measurements it stopped
  for name, shape in shapes.items():
    structs, differentiable = arg_structs(shape)
    args = concrete(structs, shape)
    cotangent = concrete([structs[0]], shape, seed=1)
    rows = {impl: (_measure(make(shape), args, iters),
                   _measure(with_backward(make(shape), differentiable), args + cotangent, iters))
            for impl, make in impls.items()}
    ours = rows["ours (auto)"]
    for impl, times in rows.items():
      cells = []
      for seconds, ours_seconds, backward in zip(times, ours, (False, True)):
        if isinstance(seconds, str):
          notes.setdefault(seconds, []).append(f"{name} {impl} {'fwd+bwd' if backward else 'fwd'}")
          cells.append(f"{'n/a':>10} {'':>8} {'':>8}")
          continue
        ratio = f"{seconds / ours_seconds:>7.3f}x" if not isinstance(ours_seconds, str) else f"{'':>8}"
        cells.append(f"{seconds * 1e3:>10.4g} {shape.model_flops(backward) / seconds / 1e12:>8.4g} {ratio}")
      print(f"{name:<12} {impl:<14} {cells[0]} {cells[1]}")
    if name == "gpu_goal" and device.platform == "gpu" and not isinstance(ours[0], str):
      achieved = shape.model_flops(False) / ours[0] / 1e12
      print(f"  goal: gpu_goal forward >= {GPU_GOAL_TFLOPS} TFLOP/s; ours {achieved:.0f}: "
            f"{'met' if achieved >= GPU_GOAL_TFLOPS else 'not met'}")
    del args, cotangent  # free the device buffers before the next shape
  for reason, measurements in notes.items():
    print(f"  n/a ({reason}): {', '.join(measurements)}")


# ------------------------------------------------------------------------------------------------ TPU compile


def _pairs(t: int, s: int, bq: int, bk: int, causal: bool) -> int:
  """(query block, key block) pairs a kernel visits (causal: on or below the diagonal)."""
  nq, nk = -(-t // bq), -(-s // bk)
  if not causal:
    return nq * nk
  return sum(min(nk, ((i + 1) * bq - 1) // bk + 1) for i in range(nq))


def stream_bytes(shape: Shape, generation: str, backward: bool) -> float:
  """HBM traffic of the flash kernels when every key / value tile (and its RoPE tables) is re-read for each
  query block and vice versa; padding ignored. Compiled 'bytes accessed' counts each tensor once instead."""
  blocks = GENERATION_BLOCK_SIZES[generation]
  t, s, e = shape.q_len, shape.kv_len + shape.sem_len, 2
  q_row = D * e + (TABLE_BYTES * D if shape.rope else 0) + 4  # a query row, its tables and its id
  k_row = 2 * D * e + (TABLE_BYTES * D if shape.rope else 0) + 4  # a key and value row, tables, id
  bq, bk = min(blocks.block_q, -(-t // 128) * 128), min(blocks.block_kv, -(-s // 128) * 128)
  per_head = t * (q_row + D * e + 4) + _pairs(t, s, bq, bk, shape.causal) * bk * k_row  # + o and lse
  if backward:
    bq, bk = min(blocks.block_q_bwd, -(-t // 128) * 128), min(blocks.block_kv_bwd, -(-s // 128) * 128)
    pairs = _pairs(t, s, bq, bk, shape.causal)
    group = shape.heads // shape.kv_heads
    dkv = s * (k_row + 2 * D * e) / group + pairs * bq * (q_row + D * e + 8)  # per query head
    dq = t * (q_row + 2 * D * e + 8) + pairs * bk * k_row
    per_head += dkv + dq + t * (2 * D * e + 4)  # + the row dot of o and do
  return per_head * shape.batch * shape.heads


def compile_tpu(shapes: dict[str, Shape], generations: list[str]) -> None:
  from jax.experimental import topologies

  print("\n== TPU compile-only (one chip's share; libtpu "
        f"{_version('libtpu')}): compiled cost and memory analysis, roofline per chip ==")
  print("GFLOP / GB: compiled flops / bytes accessed; model%: FlashAttention-count FLOPs / compiled; stream: the "
        "flash kernels' re-read tiles;\nTFLOP/s: model FLOPs / max(roofline, stream roofline), the best case")
  print(f"{'gen':<4} {'variant':<12} {'pass':<8} {'GFLOP':>9} {'model%':>6} {'GB':>7} {'temp MiB':>9} {'flop/B':>7} "
        f"{'ms':>8} {'bound':<7} | {'stream GB':>9} {'flop/B':>6} {'ms':>8} {'bound':<7} | {'TFLOP/s':>7}")
  for generation in generations:
    try:
      device = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[generation]).devices[0]
    except Exception as error:  # no libtpu here: the table is what it can be
      print(f"{generation}: no TPU topology ({type(error).__name__}: {str(error).splitlines()[0][:100]})")
      continue
    mesh = Mesh(np.array([device]), ("chip",))
    peak_flops, bandwidth = TPU_PEAKS[generation]
    for name, shape in shapes.items():
      structs, differentiable = arg_structs(shape)
      for backward in (False, True):
        args = structs + [structs[0]] if backward else structs
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())) for a in args]
        kernel = pallas_fn(shape, generation)
        fn = with_backward(kernel, differentiable) if backward else kernel
        out_specs = (P(), (P(),) * differentiable) if backward else P()
        sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(),) * len(args), out_specs=out_specs, check_vma=False)
        compiled = jax.jit(sharded).lower(*args).compile()
        cost, memory = compiled.cost_analysis(), compiled.memory_analysis()
        flops, hbm = cost["flops"], cost["bytes accessed"]
        streamed = stream_bytes(shape, generation, backward)
        roofline, stream_roofline = (max(flops / peak_flops, b / bandwidth) for b in (hbm, streamed))
        model = shape.model_flops(backward)
        print(f"{generation:<4} {name:<12} {'fwd+bwd' if backward else 'fwd':<8} {flops / 1e9:>9.5g} "
              f"{100 * model / flops:>5.0f}% {hbm / 1e9:>7.4g} {memory.temp_size_in_bytes / 2**20:>9.1f} "
              f"{flops / hbm:>7.0f} {roofline * 1e3:>8.4g} {_bound(flops / peak_flops, hbm / bandwidth):<7} | "
              f"{streamed / 1e9:>9.4g} {flops / streamed:>6.0f} {stream_roofline * 1e3:>8.4g} "
              f"{_bound(flops / peak_flops, streamed / bandwidth):<7} | "
              f"{model / max(roofline, stream_roofline) / 1e12:>7.4g}")


def _bound(compute_seconds: float, memory_seconds: float) -> str:
  return "compute" if compute_seconds >= memory_seconds else "memory"


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
  parser.add_argument("--generations", default=",".join(TOPOLOGIES), help="TPU generations to compile for")
  only = parser.add_mutually_exclusive_group()
  only.add_argument("--backend-only", action="store_true", help="only time on the current backend")
  only.add_argument("--tpu-only", action="store_true", help="only the TPU compile-only table")
  parser.add_argument("--iters", type=int, default=10, help="timed runs per measurement (median)")
  parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run")
  args = parser.parse_args(argv)
  table = QUICK_SHAPES if args.quick else SHAPES
  variants = args.variants.split(",")
  generations = args.generations.split(",")
  for value, known, flag in ((variants, table, "--variants"), (generations, TOPOLOGIES, "--generations")):
    unknown = sorted(set(value) - set(known))
    if unknown:
      parser.error(f"{flag}: unknown {unknown}; known: {', '.join(known)}")
  shapes = {name: table[name] for name in variants}
  print(f"attention bench: jax {jax.__version__}, jaxlib {_version('jaxlib')}, backend {jax.default_backend()}, "
        f"head_dim {D}, bf16")
  for name, shape in shapes.items():
    print(f"  {name}: {shape}")
  if not args.tpu_only:
    if jax.default_backend() == "gpu" or args.quick:
      time_backend(shapes, args.iters)
    else:
      print(f"\n(timing skipped: backend {jax.default_backend()}; TFLOP/s are measured on a GPU, or use --quick)")
  if not args.backend_only:
    compile_tpu(shapes, generations)


if __name__ == "__main__":
  main()
