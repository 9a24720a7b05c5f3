"""Chooses the attention implementation for `impl`, the platform and the call's shapes, and calls it.

Two entry points share the implementation names: `attention` (self-attention: causal or full, GQA, segment
ids, query offset, optional fused RoPE) and `split_cross_attention` (Plan-X's text + semantic segments under one
softmax). "auto" picks the Pallas kernel on TPU and cuDNN on GPU when they support the call, and says in the log
why it falls back to XLA when they do not. Not the kernels themselves.
"""

import logging

import jax
import jax.numpy as jnp

from planx_jax.kernels.attention.gpu import cudnn_unsupported_reason, jax_nn_attention
from planx_jax.kernels.attention.pallas_attention import LANES, pallas_attention, pallas_split_cross_attention
from planx_jax.kernels.attention.reference import xla_attention, xla_split_cross_attention
from planx_jax.kernels.attention.rope import apply_rope, validate_style
from planx_jax.kernels.attention.sharding import active_mesh, shard_kernel

log = logging.getLogger(__name__)

# "pallas" is the Mosaic TPU kernel (lowers for TPU only); "pallas_interpret" the same kernel in Pallas interpret
# mode (any platform, slow: for tests); "cudnn" / "jax_nn" are jax.nn.dot_product_attention with
# implementation "cudnn" / "xla".
IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret", "cudnn", "jax_nn")
_VALID = ("auto", *IMPLEMENTATIONS)
_LOGGED: set[str] = set()


def validate_impl(impl: str) -> str:
  if impl not in _VALID:
    raise ValueError(f"unknown attention_impl {impl!r}; available: {', '.join(_VALID)}")
  return impl


def _fallback(message: str) -> None:
  """Logs a fallback once per distinct message (calls are traced once per shape, but models trace many layers)."""
  if message not in _LOGGED:
    _LOGGED.add(message)
    log.warning(message)


def pallas_unsupported_reason(q) -> str | None:
  """Why the TPU kernel should not run this call (None when it should)."""
  if q.shape[-1] % LANES:
    return f"head_dim {q.shape[-1]} is not a multiple of {LANES} (the kernel works on whole lane tiles)"
  if q.shape[1] < LANES:
    return f"{q.shape[1]} queries are fewer than one {LANES}-row block (decode steps run faster in XLA)"
  return None


def resolve_impl(impl: str, platform: str | None = None, *, q=None, k=None, q_offset=0) -> str:
  """The implementation `impl` stands for: itself, or for "auto" the best one for `platform` and these shapes.

  Without q / k (shapes unknown) "auto" resolves by platform alone.
  """
  validate_impl(impl)
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  if platform == "tpu":
    reason = None if q is None else pallas_unsupported_reason(q)
    if reason:
      _fallback(f"attention auto on tpu: XLA instead of the Pallas kernel because {reason}")
      return "xla"
    return "pallas"
  if platform == "gpu":
    reason = None if q is None else cudnn_unsupported_reason(q, k, q_offset=q_offset)
    if reason:
      _fallback(f"attention auto on gpu: XLA instead of cuDNN because {reason}")
      return "xla"
    return "cudnn"
  return "xla"


def _tables(rope):
  cos, sin = (jnp.asarray(t) for t in rope)
  return (cos[None], sin[None]) if cos.ndim == 2 else (cos, sin)


def _run_sharded(fn, args, kinds, batch: int, heads: tuple[int, ...]):
  """`fn(*args)`, inside shard_map when a multi-device mesh is active (Mosaic kernels need per-device arrays)."""
  mesh = active_mesh()
  if mesh is None:
    return fn(*args)
  return shard_kernel(fn, mesh, batch=batch, heads=heads, arg_kinds=kinds)(*args)


def attention(q, k, v, *, rope=None, rope_style: str = "half", causal: bool = False, q_offset=0,
              q_segment_ids=None, kv_segment_ids=None, scale: float | None = None, impl: str = "auto",
              block_sizes=None):
  """Self-attention through the implementation `impl`.

  Args:
    q: [B, T, N, D]; k, v: [B, S, K, D] (GQA: N a multiple of K).
    rope: optional (cos, sin) [B or 1, T, D/2] (or [T, D/2]) tables; q and k are rotated at the same positions
      (needs T == S) in `rope_style` "half" (Qwen2) or "interleaved" (Wan). The Pallas kernel rotates tiles in
      VMEM; the other implementations rotate in XLA first.
    causal, q_offset, q_segment_ids, kv_segment_ids, scale: see `reference.xla_attention`.
    impl: an implementation name or "auto".
    block_sizes: Pallas block sizes (`pallas_attention.BlockSizes` or a TPU generation name); ignored elsewhere.
  """
  validate_style(rope_style)
  if rope is not None and q.shape[1] != k.shape[1]:
    raise ValueError(f"rope rotates q and k at the same positions: needs as many queries as keys, got "
                     f"{q.shape[1]} and {k.shape[1]} (rotate in the caller for KV-cache calls)")
  name = resolve_impl(impl, q=q, k=k, q_offset=q_offset)
  if name in ("pallas", "pallas_interpret"):
    return _pallas_attention(q, k, v, rope, rope_style, causal, q_offset, q_segment_ids, kv_segment_ids, scale,
                             block_sizes, name == "pallas_interpret")
  if rope is not None:
    q, k = apply_rope(q, rope, rope_style), apply_rope(k, rope, rope_style)
  kwargs = dict(causal=causal, q_offset=q_offset, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                scale=scale)
  if name == "xla":
    return xla_attention(q, k, v, **kwargs)
  return jax_nn_attention(q, k, v, implementation="cudnn" if name == "cudnn" else "xla", **kwargs)


def _pallas_attention(q, k, v, rope, rope_style, causal, q_offset, q_segment_ids, kv_segment_ids, scale,
                      block_sizes, interpret):
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("q_segment_ids and kv_segment_ids must be given together")
  b = q.shape[0]
  args, kinds = [q, k, v], ["bthd"] * 3
  if rope is not None:
    args += list(_tables(rope))
    kinds += ["table"] * 2
  if q_segment_ids is not None:
    args += [q_segment_ids, kv_segment_ids]
    kinds += ["bt", "bt"]
  args.append(jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32).reshape(-1), (b,)))
  kinds.append("b")

  def call(q, k, v, *rest):
    rest = list(rest)
    tables = (rest.pop(0), rest.pop(0)) if rope is not None else None
    segments = (rest.pop(0), rest.pop(0)) if q_segment_ids is not None else (None, None)
    return pallas_attention(q, k, v, q_rope=tables, k_rope=tables, rope_style=rope_style, causal=causal,
                            q_offset=rest.pop(0), q_segment_ids=segments[0], kv_segment_ids=segments[1],
                            scale=scale, block_sizes=block_sizes, interpret=interpret)

  return _run_sharded(call, args, kinds, b, (q.shape[2], k.shape[2]))


def split_cross_attention(q, k_text, v_text, k_sem, v_sem, *, q_rope, k_sem_rope, rope_style: str = "interleaved",
                          sem_mask=None, scale: float | None = None, impl: str = "auto", block_sizes=None):
  """Plan-X split cross-attention (Eq. 6-7) through `impl`.

  Args:
    q: [B, T, N, D] unrotated queries; k_text, v_text: [B, S_text, N, D]; k_sem, v_sem: [B, S_sem, N, D] with
      k_sem unrotated.
    q_rope: (cos, sin) tables at the video positions; k_sem_rope: at the (scaled) semantic positions.
    sem_mask: [B, S_sem] bool, False drops a semantic key.
  The text segment reads the unrotated query, the semantic segment the rotated one, under one softmax.
  """
  validate_style(rope_style)
  name = resolve_impl(impl, q=q, k=k_text)
  if name in ("pallas", "pallas_interpret"):
    args = [q, k_text, v_text, k_sem, v_sem, *_tables(q_rope), *_tables(k_sem_rope)]
    kinds = ["bthd"] * 5 + ["table"] * 4
    if sem_mask is not None:
      args.append(sem_mask)
      kinds.append("bt")

    def call(q, k_text, v_text, k_sem, v_sem, qc, qs, kc, ks, *mask):
      return pallas_split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=(qc, qs), k_sem_rope=(kc, ks),
                                          rope_style=rope_style, sem_mask=mask[0] if mask else None, scale=scale,
                                          block_sizes=block_sizes, interpret=name == "pallas_interpret")

    return _run_sharded(call, args, kinds, q.shape[0], (q.shape[2],))
  if name != "xla" and impl != "auto":
    _fallback(f"split_cross_attention: {name!r} has no split text / semantic form; using XLA")
  q_rot = apply_rope(q, q_rope, rope_style)
  k_sem = apply_rope(k_sem, k_sem_rope, rope_style)
  return xla_split_cross_attention(q, q_rot, k_text, v_text, k_sem, v_sem, sem_mask=sem_mask, scale=scale)
