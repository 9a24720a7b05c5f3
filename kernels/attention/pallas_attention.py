"""The Pallas TPU attention entry points: input checks, block sizes per TPU generation, padding and layout.

`pallas_attention` (self-attention: causal / full, GQA, segment ids, query offset, fused RoPE) and
`pallas_split_cross_attention` (Plan-X Eq. 6-7) take the model layout [B, T, N, D] and call the kernels of
`pallas_tpu`. Not the dispatch (`dispatch`), not the sharding wrapper (`sharding`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.kernels.attention import pallas_tpu
from planx_jax.kernels.attention.rope import packed_table, validate_style

# Ids of padding: a padded key is visible to no query, a padded query row sees no key (ids are int32; these two
# values are reserved).
PAD_KV_ID = int(np.iinfo(np.int32).min)
PAD_Q_ID = PAD_KV_ID + 1
LANES = 128  # TPU vreg lanes: Mosaic block rule for the minor dimension
_MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query / key rows per kernel step, forward and backward (dK/dV and dQ kernels share the backward pair).

  On TPU every value must be a multiple of 128: key blocks are the lane dimension of the forward logits and
  query blocks that of the logsumexp rows and the transposed backward logits (tiles are (8, 128)).
  """

  block_q: int = 512
  block_kv: int = 512
  block_q_bwd: int = 512
  block_kv_bwd: int = 512

  def check(self, *, mosaic: bool) -> "BlockSizes":
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"BlockSizes.{field.name} must be a positive int, got {value!r}")
      if mosaic and value % LANES:
        raise ValueError(f"BlockSizes.{field.name}={value} is illegal for the TPU kernel: blocks must be multiples "
                         f"of {LANES} (TPU tiles are (8, 128) and these blocks are lane dimensions); "
                         f"use e.g. {max(LANES, value // LANES * LANES)}")
    return self


# Per-generation defaults. Not timed on hardware (none was available); chosen from the compiled roofline
# (tools/bench_attention.py): 512 is MaxText's default; v5p and v6e have more VMEM per core, and v6e's
# compute / bandwidth ridge (~560 flop/B) needs 1024-row query blocks to be compute-bound.
GENERATION_BLOCK_SIZES = {
    "v5e": BlockSizes(512, 512, 512, 512),
    "v5p": BlockSizes(512, 1024, 512, 512),
    "v6e": BlockSizes(1024, 1024, 512, 1024),
}
GENERIC_BLOCK_SIZES = BlockSizes()
# Scoped VMEM the kernels may use (the compiler default is 16-32 MiB; every generation here has >= 95 MiB).
VMEM_LIMIT_BYTES = 64 * _MIB


def tpu_generation(device_kind: str) -> str | None:
  """"v5e" / "v5p" / "v6e" from a TPU `device_kind` ("TPU v5 lite", "TPU v5p", "TPU v6 lite", ...), else None."""
  kind = device_kind.lower().replace(" ", "")
  if "v6" in kind:
    return "v6e"
  if "v5lite" in kind or "v5e" in kind:
    return "v5e"
  if "v5" in kind:
    return "v5p"
  return None


def default_block_sizes(generation: str | None = None) -> BlockSizes:
  """Block sizes for `generation` ("v5e", "v5p", "v6e"); None reads the first device (generic off TPU)."""
  if generation is None:
    device = jax.devices()[0]
    generation = tpu_generation(device.device_kind) if device.platform == "tpu" else None
    return GENERATION_BLOCK_SIZES.get(generation, GENERIC_BLOCK_SIZES)
  if generation not in GENERATION_BLOCK_SIZES:
    raise ValueError(f"unknown TPU generation {generation!r}; known: {sorted(GENERATION_BLOCK_SIZES)}")
  return GENERATION_BLOCK_SIZES[generation]


def _block_sizes(block_sizes, interpret: bool) -> BlockSizes:
  if block_sizes is None or isinstance(block_sizes, str):
    block_sizes = default_block_sizes(block_sizes)
  if not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes, a generation name or None, got {block_sizes!r}")
  return block_sizes.check(mosaic=not interpret)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _fit(blocks: tuple[int, int], length: int, align: int) -> tuple[tuple[int, int], int]:
  """(fitted blocks, padded length): one full block when the aligned length fits in both, else the blocks."""
  aligned = _round_up(max(length, 1), align)
  if aligned <= min(blocks):
    return (aligned, aligned), aligned
  return blocks, _round_up(length, math.lcm(*blocks))


def _check_qkv(name: str, q, k, v, mosaic: bool):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"{name}: q, k, v must be [B, T, N, D], got {q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
    raise ValueError(f"{name}: k {k.shape} and v {v.shape} must be [B, S, K, D] matching q {q.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"{name}: {q.shape[2]} query heads are not a multiple of {k.shape[2]} kv heads")
  if mosaic and q.shape[3] % LANES:
    raise ValueError(f"{name}: head_dim {q.shape[3]} is not a multiple of {LANES}; the TPU kernel needs whole lane "
                     f"tiles (use impl='xla', or 'auto', which falls back to it)")


def _tables(name: str, rope, length: int, padded: int, batch: int, style: str):
  """(cos, sin) [B|1, L, D/2] -> the packed table [B|1, padded, D] fp32 (`rope.packed_table`), or None."""
  if rope is None:
    return None
  cos, sin = (jnp.asarray(t) for t in rope)
  if cos.ndim == 2:
    cos, sin = cos[None], sin[None]
  if cos.shape != sin.shape or cos.ndim != 3 or cos.shape[0] not in (1, batch) or cos.shape[1] != length:
    raise ValueError(f"{name}: rope tables must be [B or 1, {length}, D/2], got {cos.shape} and {sin.shape}")
  return jnp.pad(packed_table(cos, sin, style), ((0, 0), (0, padded - length), (0, 0)))  # [B|1, padded, D]


def _token_major(x, padded: int):
  """[B, L, H, D] -> [B, padded, H*D]: zero rows appended (a copy only when L < padded), heads flattened (free)."""
  b, length, h, d = x.shape
  if padded != length:
    x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
  return x.reshape(b, padded, h * d)


def _ids(ids, length: int, padded: int, pad_id: int, batch: int):
  """[B, L] int ids (or None: all 0) padded with `pad_id` -> [B, 1, padded] int32."""
  ids = jnp.zeros((batch, length), jnp.int32) if ids is None else jnp.asarray(ids, jnp.int32)
  if ids.shape != (batch, length):
    raise ValueError(f"segment ids must be [B, L] = [{batch}, {length}], got {ids.shape}")
  return jnp.pad(ids, ((0, 0), (0, padded - length)), constant_values=pad_id)[:, None, :]


def _layout(blocks_q, blocks_kv, *, causal, scale, style, q_tables, k_tables, plain_kv_len, has_ids, interpret,
            head_dim):
  return pallas_tpu._Layout(
      head_dim=head_dim, block_q=blocks_q[0], block_kv=blocks_kv[0], block_q_bwd=blocks_q[1], block_kv_bwd=blocks_kv[1],
      causal=causal, scale=float(head_dim**-0.5 if scale is None else scale), rope_style=style,
      rope_q=q_tables is not None, rope_k=k_tables is not None, plain_kv_len=plain_kv_len,
      q_table_batch=1 if q_tables is None else q_tables.shape[0],
      k_table_batch=1 if k_tables is None else k_tables.shape[0], has_ids=has_ids,
      vmem_limit_bytes=None if interpret else VMEM_LIMIT_BYTES, interpret=interpret)


def pallas_attention(q, k, v, *, q_rope=None, k_rope=None, rope_style: str = "half", causal: bool = False,
                     q_offset=0, q_segment_ids=None, kv_segment_ids=None, scale: float | None = None,
                     block_sizes=None, interpret: bool = False) -> jax.Array:
  """Flash attention with RoPE fused into the kernel; the semantics of `reference.xla_attention` on rotated q, k.

  Args:
    q: [B, T, N, D]; k, v: [B, S, K, D], N a multiple of K (GQA).
    q_rope, k_rope: optional (cos, sin) [B or 1, T (resp. S), D/2] fp32 tables gathered at each token's
      position; the kernel rotates q and k tiles with them (`rope_style` "half" or "interleaved").
    causal, q_offset, q_segment_ids, kv_segment_ids, scale: as `reference.xla_attention`. Segment ids are
      int32; the two smallest int32 values are reserved for padding.
    block_sizes: `BlockSizes`, a generation name ("v5e", "v5p", "v6e") or None (from the device).
    interpret: run the kernel in Pallas interpret mode (CPU); TPU block rules are then not enforced.

  Returns:
    [B, T, N, D] in q's dtype; differentiable in q, k, v (tables are constants).
  """
  _check_qkv("pallas_attention", q, k, v, not interpret)
  validate_style(rope_style)
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("q_segment_ids and kv_segment_ids must be given together")
  blocks = _block_sizes(block_sizes, interpret)
  b, t, _, d = q.shape
  s = k.shape[1]
  align = 8 if interpret else LANES
  blocks_q, t_pad = _fit((blocks.block_q, blocks.block_q_bwd), t, align)
  blocks_kv, s_pad = _fit((blocks.block_kv, blocks.block_kv_bwd), s, align)
  q_tables = _tables("q_rope", q_rope, t, t_pad, b, rope_style)
  k_tables = _tables("k_rope", k_rope, s, s_pad, b, rope_style)
  has_ids = q_segment_ids is not None or s_pad != s
  ids = None
  if has_ids:
    ids = (_ids(q_segment_ids, t, t_pad, PAD_Q_ID, b), _ids(kv_segment_ids, s, s_pad, PAD_KV_ID, b))
  offsets = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32).reshape(-1), (b,))
  layout = _layout(blocks_q, blocks_kv, causal=causal, scale=scale, style=rope_style, q_tables=q_tables,
                   k_tables=k_tables, plain_kv_len=0, has_ids=has_ids, interpret=interpret, head_dim=d)
  out = pallas_tpu.flash(_token_major(q, t_pad), _token_major(k, s_pad), _token_major(v, s_pad), q_tables,
                         k_tables, ids, offsets, layout)  # [B, T_pad, N*D]
  return out[:, :t].reshape(q.shape)


def pallas_split_cross_attention(q, k_text, v_text, k_sem, v_sem, *, q_rope, k_sem_rope,
                                 rope_style: str = "interleaved", sem_mask=None, scale: float | None = None,
                                 block_sizes=None, interpret: bool = False) -> jax.Array:
  """Plan-X Eq. 6-7 in one kernel: softmax([q k_text^T | R(q) R(k_sem)^T] * scale) [v_text | v_sem].

  Text keys (unrotated, all visible) read the unrotated query; semantic keys are rotated in the kernel with
  `k_sem_rope` and read the query rotated with `q_rope`. The text segment is padded to whole key blocks so no
  block mixes the two. Semantics of `reference.xla_split_cross_attention(q, R(q), k_text, v_text, R(k_sem), ...)`.

  Args:
    q: [B, T, N, D]; k_text, v_text: [B, S_text, N, D], S_text >= 1; k_sem, v_sem: [B, S_sem, N, D] (S_sem may
      be 0).
    q_rope, k_sem_rope: (cos, sin) [B or 1, T (resp. S_sem), D/2] fp32.
    sem_mask: [B, S_sem] bool, False drops a semantic key; None keeps all.
    scale, block_sizes, interpret: as `pallas_attention`.
  """
  _check_qkv("pallas_split_cross_attention", q, k_text, v_text, not interpret)
  _check_qkv("pallas_split_cross_attention", q, k_sem, v_sem, not interpret)
  validate_style(rope_style)
  b, t, _, d = q.shape
  s_text, s_sem = k_text.shape[1], k_sem.shape[1]
  if s_text < 1:
    raise ValueError("pallas_split_cross_attention needs at least one text key")
  blocks = _block_sizes(block_sizes, interpret)
  align = 8 if interpret else LANES
  blocks_q, t_pad = _fit((blocks.block_q, blocks.block_q_bwd), t, align)
  blocks_kv, text_pad = _fit((blocks.block_kv, blocks.block_kv_bwd), s_text, align)
  sem_pad = _round_up(s_sem, math.lcm(*blocks_kv))
  q_tables = _tables("q_rope", q_rope, t, t_pad, b, rope_style)
  sem_tables = _tables("k_sem_rope", k_sem_rope, s_sem, sem_pad, b, rope_style)
  identity = packed_table(jnp.ones((1, 1, d // 2)), jnp.zeros((1, 1, d // 2)), rope_style)  # cos 1, sin 0
  identity = jnp.broadcast_to(identity, (sem_tables.shape[0], text_pad, d))
  k_tables = jnp.concatenate([identity, sem_tables], axis=1)  # [B|1, S_pad, D]: text keys are not rotated
  sem_valid = jnp.ones((b, s_sem), bool) if sem_mask is None else jnp.asarray(sem_mask).astype(bool)
  if sem_valid.shape != (b, s_sem):
    raise ValueError(f"sem_mask must be [B, S_sem] = [{b}, {s_sem}], got {sem_valid.shape}")
  kv_ids = jnp.concatenate([
      jnp.pad(jnp.zeros((b, s_text), jnp.int32), ((0, 0), (0, text_pad - s_text)), constant_values=PAD_KV_ID),
      jnp.pad(jnp.where(sem_valid, 0, PAD_KV_ID).astype(jnp.int32), ((0, 0), (0, sem_pad - s_sem)),
              constant_values=PAD_KV_ID)], axis=1)[:, None, :]  # [B, 1, S_pad]
  ids = (_ids(None, t, t_pad, PAD_Q_ID, b), kv_ids)
  k = jnp.concatenate([_token_major(k_text, text_pad), _token_major(k_sem, sem_pad)], axis=1)  # [B, S_pad, N*D]
  v = jnp.concatenate([_token_major(v_text, text_pad), _token_major(v_sem, sem_pad)], axis=1)
  layout = _layout(blocks_q, blocks_kv, causal=False, scale=scale, style=rope_style, q_tables=q_tables,
                   k_tables=k_tables, plain_kv_len=text_pad, has_ids=True, interpret=interpret, head_dim=d)
  out = pallas_tpu.flash(_token_major(q, t_pad), k, v, q_tables, k_tables, ids,
                         jnp.zeros((b,), jnp.int32), layout)  # [B, T_pad, N*D]
  return out[:, :t].reshape(q.shape)
