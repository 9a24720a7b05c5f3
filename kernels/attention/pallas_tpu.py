"""Pallas TPU (Mosaic) flash attention with RoPE applied inside the kernel: forward and backward kernels.

One kernel family serves Plan-X's three attention shapes through a static `_Layout`: causal GQA with half-split
RoPE (planner), full attention with interleaved 3D RoPE (DiT self-attention) and the split text / semantic
cross-attention (keys below `plain_kv_len` see the unrotated query). Arrays here are token-major with the heads
flattened, q [B, T, N*D] and k / v [B, S, K*D] (a free reshape of the models' [B, T, N, D], no transposes): a
block is one head's [rows, D] lane-aligned slice. Padding, validation and the public wrappers: `pallas_attention`.

Masking: a key is visible when (causal) its slot <= q_offset + the query slot, and (ids) the query and key ids
are equal. Masked probabilities are exactly zero; a query row with no visible key outputs zeros and has
logsumexp +inf (so its backward probabilities are zero too).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from planx_jax.kernels.attention.reference import MASK_VALUE

_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))  # a [m, d] . b [n, d] -> [m, n]
_NN = (((1,), (0,)), ((), ()))  # a [m, k] . b [k, n] -> [m, n]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static configuration of one kernel call (hashable: the custom_vjp's non-differentiable argument)."""

  head_dim: int
  block_q: int
  block_kv: int
  block_q_bwd: int
  block_kv_bwd: int
  causal: bool
  scale: float
  rope_style: str
  rope_q: bool  # q tables given: queries are rotated for keys at slots >= plain_kv_len
  rope_k: bool  # k tables given: every key tile is rotated
  plain_kv_len: int  # keys [0, plain_kv_len) read the unrotated query (Plan-X's text segment)
  q_table_batch: int  # 1 (shared tables) or B
  k_table_batch: int
  has_ids: bool
  vmem_limit_bytes: int | None
  interpret: bool


def _rotate(x32, table, style: str, inverse: bool = False):
  """Rotates a [rows, D] fp32 tile by its packed [rows, D] cos / sin table (see `rope.packed_table`).

  One table of D values per row carries both cos and sin (half the traffic of two full-width tables); the
  full-width cos and signed sin are rebuilt with lane rolls: x' = x * cos + partner(x) * sin, where the partner is
  x rolled by D/2 ("half") or the pair neighbour, lane i ^ 1 ("interleaved"). `inverse` negates sin (the gradient).
  """
  d = x32.shape[-1]
  table = table.astype(_F32)
  lane = lax.broadcasted_iota(jnp.int32, x32.shape, 1)
  if style == "half":  # table [c, s] -> cos [c, c], sin [-s, s]; partner [x2, x1]
    first = lane < d // 2
    swapped = pltpu.roll(table, d // 2, 1)  # [s, c]
    cos, sin = jnp.where(first, table, swapped), jnp.where(first, -swapped, table)
    partner = pltpu.roll(x32, d // 2, 1)
  else:  # table [c0, s0, c1, s1, ..] -> cos [c0, c0, ..], sin [-s0, s0, ..]; partner lane i ^ 1
    even = lane % 2 == 0
    cos = jnp.where(even, table, pltpu.roll(table, 1, 1))
    sin = jnp.where(even, -pltpu.roll(table, d - 1, 1), table)
    partner = jnp.where(even, pltpu.roll(x32, d - 1, 1), pltpu.roll(x32, 1, 1))
  return x32 * cos + partner * (-sin if inverse else sin)


def _column(row):
  """[1, n] -> [n, 1] (a row of per-query values read as a column)."""
  return jnp.broadcast_to(row, (8, row.shape[1])).T[:, :1]


def _visible(layout: _Layout, q_slot, k_slot, q_ids, k_ids):
  """Boolean visibility from broadcastable query / key slots and ids, or None when nothing is masked."""
  mask = None
  if layout.causal:
    mask = k_slot <= q_slot
  if layout.has_ids:
    same = q_ids == k_ids
    mask = same if mask is None else mask & same
  return mask


def _unpack(refs, layout: _Layout, n_tail: int):
  """Splits a kernel's refs into (q, k, v, q table, k table, ids, rest)."""
  refs = list(refs)
  q_ref, k_ref, v_ref = refs[:3]
  pos = 3
  q_table = k_table = None
  ids = (None, None)
  if layout.rope_q:
    q_table, pos = refs[pos], pos + 1
  if layout.rope_k:
    k_table, pos = refs[pos], pos + 1
  if layout.has_ids:
    ids, pos = (refs[pos], refs[pos + 1]), pos + 2
  rest = refs[pos:]
  assert len(rest) == n_tail, (len(rest), n_tail)
  return q_ref, k_ref, v_ref, q_table, k_table, ids, rest


def _query(layout: _Layout, q_plain, q_rot, kv_start):
  """The query tile a key block reads: unrotated below `plain_kv_len` (or without q RoPE), rotated otherwise."""
  if not layout.rope_q:
    return q_plain
  if layout.plain_kv_len == 0:
    return q_rot
  return jnp.where(kv_start < layout.plain_kv_len, q_plain, q_rot)


def _block_run(layout: _Layout, offset, i, j, bq: int, bk: int):
  """(slot of query block i's first row, whether key block j has a visible key for it: causal skips blocks
  entirely above the diagonal)."""
  q_start = offset + i * bq
  return q_start, (j * bk <= q_start + bq - 1) if layout.causal else True


def _block_logits(layout: _Layout, q_ref, k_ref, k_table, qrot_sc, id_refs, q_start, j):
  """Scaled logits [bq, bk] fp32 of query block (first slot q_start) and key block j, the (rotated) key tile, and
  the visibility mask (or None); shared by the forward and dQ kernels."""
  bq, bk = q_ref.shape[0], k_ref.shape[0]
  k = k_ref[...]
  if layout.rope_k:
    k = _rotate(k.astype(_F32), k_table[...], layout.rope_style).astype(k.dtype)
  q = _query(layout, q_ref[...], qrot_sc[...] if layout.rope_q else None, j * bk)
  s = lax.dot_general(q, k, _NT, preferred_element_type=_F32) * layout.scale  # [bq, bk]
  q_slot = q_start + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  k_slot = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  qid_ref, kvid_ref = id_refs
  mask = _visible(layout, q_slot, k_slot, _column(qid_ref[...]) if layout.has_ids else None,
                  kvid_ref[...] if layout.has_ids else None)
  return s, k, mask


# ------------------------------------------------------------------------------------------------ forward


def _forward_kernel(offsets_ref, *refs, layout: _Layout):
  q_ref, k_ref, v_ref, qt, kt, (qid_ref, kvid_ref), rest = _unpack(refs, layout, 5 + layout.rope_q)
  o_ref, lse_ref, m_sc, l_sc, acc_sc = rest[:5]
  qrot_sc = rest[5] if layout.rope_q else None
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bq, bk = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, _F32)
    l_sc[...] = jnp.zeros(l_sc.shape, _F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, _F32)
    if layout.rope_q:  # rotate the query tile once; it stays in VMEM for every key block
      qrot_sc[...] = _rotate(q_ref[...].astype(_F32), qt[...], layout.rope_style).astype(qrot_sc.dtype)

  q_start, run = _block_run(layout, offsets_ref[b], i, j, bq, bk)

  @pl.when(run)
  def _step():
    s, _, mask = _block_logits(layout, q_ref, k_ref, kt, qrot_sc, (qid_ref, kvid_ref), q_start, j)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_prev = m_sc[...]  # [bq, 1]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_next)  # [bq, bk]
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    m_sc[...] = m_next
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * alpha + lax.dot_general(p.astype(v.dtype), v, _NN, preferred_element_type=_F32)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l, m = l_sc[...], m_sc[...]  # [bq, 1]
    visible = l > 0
    o_ref[...] = (acc_sc[...] * jnp.where(visible, 1.0 / jnp.where(visible, l, 1.0), 0.0)).astype(o_ref.dtype)
    lse = jnp.where(visible, m + jnp.log(jnp.where(visible, l, 1.0)), jnp.inf)  # [bq, 1]
    lse_ref[...] = jnp.broadcast_to(lse, (bq, 8)).T[:1, :]  # [1, bq]


# ------------------------------------------------------------------------------------------------ shared specs


def _specs(layout: _Layout, bq: int, bk: int, d: int, q_index, kv_index, q_head, kv_head):
  """BlockSpecs of (q, k, v, tables, ids) for index functions q_index / kv_index (block numbers) and heads."""

  squeezed = pl.Squeezed()
  kv_spec = pl.BlockSpec((squeezed, bk, d), lambda *g: (g[0], kv_index(*g), kv_head(*g)))
  specs = [pl.BlockSpec((squeezed, bq, d), lambda *g: (g[0], q_index(*g), q_head(*g))), kv_spec, kv_spec]
  if layout.rope_q:
    q_table = pl.BlockSpec((squeezed, bq, d),
                           lambda *g: (g[0] if layout.q_table_batch > 1 else 0, q_index(*g), 0))
    specs.append(q_table)
  if layout.rope_k:
    k_table = pl.BlockSpec((squeezed, bk, d),
                           lambda *g: (g[0] if layout.k_table_batch > 1 else 0, kv_index(*g), 0))
    specs.append(k_table)
  if layout.has_ids:
    specs += [pl.BlockSpec((squeezed, 1, bq), lambda *g: (g[0], 0, q_index(*g))),
              pl.BlockSpec((squeezed, 1, bk), lambda *g: (g[0], 0, kv_index(*g)))]
  return specs


def _inputs(q, k, v, q_table, k_table, ids):
  args = [q, k, v] + [t for t in (q_table, k_table) if t is not None]
  return args + ([] if ids is None else list(ids))


def _params(layout: _Layout, semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=layout.vmem_limit_bytes)


def _visited_pairs(layout: _Layout, t: int, s: int, bq: int, bk: int) -> int:
  """(query block, key block) pairs a kernel computes; causal counts the blocks on or below the diagonal
  (query offset 0)."""
  nq, nk = t // bq, s // bk
  if not layout.causal:
    return nq * nk
  return sum(min(nk, ((i + 1) * bq - 1) // bk + 1) for i in range(nq))


def _cost(layout: _Layout, q, k, bq: int, bk: int, matmuls: int, tensors_read: int) -> pl.CostEstimate:
  """What one call does, for XLA's cost analysis (a custom call is otherwise counted as free): `matmuls` [bq, bk]
  x D products per visited block pair, one exp per logit, and `tensors_read` q-sized / k-sized tensors moved."""
  b, t, width = q.shape
  d = layout.head_dim
  logits = b * (width // d) * _visited_pairs(layout, t, k.shape[1], bq, bk) * bq * bk
  bytes_accessed = tensors_read * (q.size * q.dtype.itemsize + 2 * k.size * k.dtype.itemsize)
  return pl.CostEstimate(flops=2 * matmuls * logits * d, transcendentals=logits, bytes_accessed=bytes_accessed)


def _full_block_index(layout: _Layout, bq: int, bk: int, num_kv_blocks: int):
  """Causal forward / dQ: key block j for query block i, clamped to the last visible one (no DMA when skipped)."""
  if not layout.causal:
    return lambda b, h, i, j, offsets: j

  def index(b, h, i, j, offsets):
    last = (offsets[b] + (i + 1) * bq - 1) // bk
    return jnp.clip(jnp.minimum(j, last), 0, num_kv_blocks - 1)

  return index


def forward(q, k, v, q_table, k_table, ids, offsets, layout: _Layout):
  """q [B, T, N*D], k / v [B, S, K*D] (padded) -> (o [B, T, N*D], lse [B, N, 1, T] fp32)."""
  d = layout.head_dim
  b, t, n = q.shape[0], q.shape[1], q.shape[2] // d
  s, kv_heads = k.shape[1], k.shape[2] // d
  bq, bk = layout.block_q, layout.block_kv
  group = n // kv_heads
  grid = (b, n, t // bq, s // bk)
  kv_index = _full_block_index(layout, bq, bk, s // bk)
  in_specs = _specs(layout, bq, bk, d, lambda b_, h, i, j, o: i, kv_index, lambda b_, h, i, j, o: h,
                    lambda b_, h, i, j, o: h // group)
  scratch = [pltpu.VMEM((bq, 1), _F32), pltpu.VMEM((bq, 1), _F32), pltpu.VMEM((bq, d), _F32)]
  if layout.rope_q:
    scratch.append(pltpu.VMEM((bq, d), q.dtype))
  squeezed = pl.Squeezed()
  out_specs = [pl.BlockSpec((squeezed, bq, d), lambda b_, h, i, j, o: (b_, i, h)),
               pl.BlockSpec((squeezed, squeezed, 1, bq), lambda b_, h, i, j, o: (b_, h, 0, i))]
  return pl.pallas_call(
      functools.partial(_forward_kernel, layout=layout),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, 1, t), _F32)],
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=grid, in_specs=in_specs,
                                             out_specs=out_specs, scratch_shapes=scratch),
      compiler_params=_params(layout, ("parallel", "parallel", "parallel", "arbitrary")),
      interpret=layout.interpret,
      cost_estimate=_cost(layout, q, k, bq, bk, matmuls=2, tensors_read=1),
      name="planx_flash_attention_fwd",
  )(offsets, *_inputs(q, k, v, q_table, k_table, ids))


# ------------------------------------------------------------------------------------------------ backward


def _dkv_kernel(offsets_ref, *refs, layout: _Layout):
  q_ref, k_ref, v_ref, qt, kt, (qid_ref, kvid_ref), rest = _unpack(refs, layout, 7 + layout.rope_k)
  lse_ref, delta_ref, do_ref, dk_ref, dv_ref, dk_sc, dv_sc = rest[:7]
  krot_sc = rest[7] if layout.rope_k else None
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  bq, bk = q_ref.shape[0], k_ref.shape[0]

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, _F32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, _F32)
    if layout.rope_k:  # rotate the key tile once; it stays in VMEM for every query block
      krot_sc[...] = _rotate(k_ref[...].astype(_F32), kt[...], layout.rope_style).astype(krot_sc.dtype)

  q_start, run = _block_run(layout, offsets_ref[b], i, j, bq, bk)

  @pl.when(run)
  def _step():
    k = krot_sc[...] if layout.rope_k else k_ref[...]
    q_plain = q_ref[...]
    q_rot = None
    if layout.rope_q:
      q_rot = _rotate(q_plain.astype(_F32), qt[...], layout.rope_style).astype(q_plain.dtype)
    q = _query(layout, q_plain, q_rot, j * bk)
    s_t = lax.dot_general(k, q, _NT, preferred_element_type=_F32) * layout.scale  # [bk, bq]
    k_slot = j * bk + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
    q_slot = q_start + lax.broadcasted_iota(jnp.int32, (1, bq), 1)
    mask = _visible(layout, q_slot, k_slot, qid_ref[...] if layout.has_ids else None,
                    _column(kvid_ref[...]) if layout.has_ids else None)
    p_t = jnp.exp(s_t - lse_ref[...])  # [bk, bq]; lse row [1, bq]
    if mask is not None:
      p_t = jnp.where(mask, p_t, 0.0)
    do = do_ref[...]  # [bq, D]
    dv_sc[...] += lax.dot_general(p_t.astype(do.dtype), do, _NN, preferred_element_type=_F32)
    dp_t = lax.dot_general(v_ref[...], do, _NT, preferred_element_type=_F32)  # [bk, bq]
    ds_t = p_t * (dp_t - delta_ref[...])
    dk_sc[...] += lax.dot_general(ds_t.astype(q.dtype), q, _NN, preferred_element_type=_F32) * layout.scale

  @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _finish():
    dk = dk_sc[...]
    if layout.rope_k:  # gradient of the rotation: the inverse rotation (negated sin)
      dk = _rotate(dk, kt[...], layout.rope_style, inverse=True)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(offsets_ref, *refs, layout: _Layout):
  plain_acc = (not layout.rope_q) or layout.plain_kv_len > 0
  n_tail = 4 + plain_acc + 2 * layout.rope_q
  q_ref, k_ref, v_ref, qt, kt, (qid_ref, kvid_ref), rest = _unpack(refs, layout, n_tail)
  lse_ref, delta_ref, do_ref, dq_ref = rest[:4]
  rest = rest[4:]
  plain_sc = rest.pop(0) if plain_acc else None
  rot_sc, qrot_sc = (rest[0], rest[1]) if layout.rope_q else (None, None)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bq, bk = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    for acc in (plain_sc, rot_sc):
      if acc is not None:
        acc[...] = jnp.zeros(acc.shape, _F32)
    if layout.rope_q:
      qrot_sc[...] = _rotate(q_ref[...].astype(_F32), qt[...], layout.rope_style).astype(qrot_sc.dtype)

  q_start, run = _block_run(layout, offsets_ref[b], i, j, bq, bk)

  @pl.when(run)
  def _step():
    s, k, mask = _block_logits(layout, q_ref, k_ref, kt, qrot_sc, (qid_ref, kvid_ref), q_start, j)
    p = jnp.exp(s - _column(lse_ref[...]))
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    do = do_ref[...]
    dp = lax.dot_general(do, v_ref[...], _NT, preferred_element_type=_F32)  # [bq, bk]
    ds = p * (dp - _column(delta_ref[...]))
    contribution = lax.dot_general(ds.astype(k.dtype), k, _NN, preferred_element_type=_F32) * layout.scale

    if rot_sc is None:
      plain_sc[...] += contribution
    elif plain_sc is None:
      rot_sc[...] += contribution
    else:
      is_plain = j * bk < layout.plain_kv_len

      @pl.when(is_plain)
      def _plain():
        plain_sc[...] += contribution

      @pl.when(jnp.logical_not(is_plain))
      def _rotated():
        rot_sc[...] += contribution

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq = jnp.zeros(dq_ref.shape, _F32)
    if plain_sc is not None:
      dq = dq + plain_sc[...]
    if rot_sc is not None:
      dq = dq + _rotate(rot_sc[...], qt[...], layout.rope_style, inverse=True)
    dq_ref[...] = dq.astype(dq_ref.dtype)


def backward(q, k, v, q_table, k_table, ids, offsets, o, lse, do, layout: _Layout):
  """Gradients (dq, dk, dv) of the forward given its output o and logsumexp lse."""
  d = layout.head_dim
  b, t, n = q.shape[0], q.shape[1], q.shape[2] // d
  s, kv_heads = k.shape[1], k.shape[2] // d
  group = n // kv_heads
  bq, bk = layout.block_q_bwd, layout.block_kv_bwd
  nq, nk = t // bq, s // bk
  delta = jnp.sum((o.astype(_F32) * do.astype(_F32)).reshape(b, t, n, d), axis=-1)  # [B, T, N]
  delta = delta.transpose(0, 2, 1)[:, :, None, :]  # [B, N, 1, T]
  squeezed = pl.Squeezed()
  args = _inputs(q, k, v, q_table, k_table, ids)

  # dK / dV: grid (B, K, kv blocks, G, q blocks); the G query heads of a kv head accumulate into one tile.
  if layout.causal:
    def q_index(b_, kh, j, g, i, offsets_):
      first = (j * bk - offsets_[b_]) // bq
      return jnp.clip(jnp.maximum(i, first), 0, nq - 1)
  else:
    def q_index(b_, kh, j, g, i, offsets_):
      return i
  dkv_specs = _specs(layout, bq, bk, d, q_index, lambda b_, kh, j, g, i, o_: j,
                     lambda b_, kh, j, g, i, o_: kh * group + g, lambda b_, kh, j, g, i, o_: kh)
  row = pl.BlockSpec((squeezed, squeezed, 1, bq), lambda b_, kh, j, g, i, o_: (b_, kh * group + g, 0,
                                                                               q_index(b_, kh, j, g, i, o_)))
  do_spec = pl.BlockSpec((squeezed, bq, d), lambda b_, kh, j, g, i, o_: (b_, q_index(b_, kh, j, g, i, o_),
                                                                         kh * group + g))
  kv_out = pl.BlockSpec((squeezed, bk, d), lambda b_, kh, j, g, i, o_: (b_, j, kh))
  scratch = [pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)]
  if layout.rope_k:
    scratch.append(pltpu.VMEM((bk, d), k.dtype))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, layout=layout),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=(b, kv_heads, nk, group, nq),
                                             in_specs=dkv_specs + [row, row, do_spec], out_specs=[kv_out, kv_out],
                                             scratch_shapes=scratch),
      compiler_params=_params(layout, ("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=layout.interpret,
      cost_estimate=_cost(layout, q, k, bq, bk, matmuls=4, tensors_read=2),
      name="planx_flash_attention_dkv",
  )(offsets, *args, lse, delta, do)

  # dQ: grid (B, N, q blocks, kv blocks).
  kv_index = _full_block_index(layout, bq, bk, nk)
  dq_specs = _specs(layout, bq, bk, d, lambda b_, h, i, j, o_: i, kv_index, lambda b_, h, i, j, o_: h,
                    lambda b_, h, i, j, o_: h // group)
  q_row = pl.BlockSpec((squeezed, squeezed, 1, bq), lambda b_, h, i, j, o_: (b_, h, 0, i))
  q_tile = pl.BlockSpec((squeezed, bq, d), lambda b_, h, i, j, o_: (b_, i, h))
  scratch = []
  if (not layout.rope_q) or layout.plain_kv_len > 0:
    scratch.append(pltpu.VMEM((bq, d), _F32))
  if layout.rope_q:
    scratch += [pltpu.VMEM((bq, d), _F32), pltpu.VMEM((bq, d), q.dtype)]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, layout=layout),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=(b, n, nq, nk),
                                             in_specs=dq_specs + [q_row, q_row, q_tile], out_specs=q_tile,
                                             scratch_shapes=scratch),
      compiler_params=_params(layout, ("parallel", "parallel", "parallel", "arbitrary")),
      interpret=layout.interpret,
      cost_estimate=_cost(layout, q, k, bq, bk, matmuls=3, tensors_read=2),
      name="planx_flash_attention_dq",
  )(offsets, *args, lse, delta, do)
  return dq, dk, dv


# ------------------------------------------------------------------------------------------------ custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def flash(q, k, v, q_table, k_table, ids, offsets, layout: _Layout):
  """Differentiable in q, k, v; RoPE tables, ids and offsets are constants (zero cotangents)."""
  return forward(q, k, v, q_table, k_table, ids, offsets, layout)[0]


def _flash_fwd(q, k, v, q_table, k_table, ids, offsets, layout):
  o, lse = forward(q, k, v, q_table, k_table, ids, offsets, layout)
  return o, (q, k, v, q_table, k_table, ids, offsets, o, lse)


def _zeros_like_tree(tree):
  return jax.tree.map(lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.floating)
                      else np.zeros(x.shape, jax.dtypes.float0), tree)


def _flash_bwd(layout, residuals, do):
  q, k, v, q_table, k_table, ids, offsets, o, lse = residuals
  dq, dk, dv = backward(q, k, v, q_table, k_table, ids, offsets, o, lse, do, layout)
  return (dq, dk, dv, _zeros_like_tree(q_table), _zeros_like_tree(k_table), _zeros_like_tree(ids),
          _zeros_like_tree(offsets))


flash.defvjp(_flash_fwd, _flash_bwd)
