"""Fused codebook argmax as a Pallas TPU (Mosaic) kernel: scores, running best and its index in one codebook pass.

For TA-Tok's lookup on TPU (or interpreted on CPU for tests), with the contract and tie / NaN rules of
`reference.streaming_codebook_argmax`. Not a sampler: Gumbel-max draws stay in `reference.codebook_sample`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from planx_jax.kernels.codebook.reference import _flat_inputs

# TPU tiling of the last two block dims of 32-bit arrays: sublanes (query rows) x lanes (codes).
SUBLANES = 8
LANES = 128
# Defaults. 256 query rows per block give 128 flop per fp32 codebook byte, above the ridge of the fp32 matmul
# (precision HIGHEST: six bf16 MXU passes) on v5e / v5p / v6e, so re-streaming the codebook for every row block
# is not the bottleneck. 2048 codes per tile (scored in 512-code chunks) keep the grid short (32 steps per row
# block at K = 65536), each step's codebook DMA large, and fit the VMEM budget below at D = 1536 in fp32.
BLOCK_ROWS = 256
TILE_SIZE = 2048
# Largest VMEM estimate a (block_rows, tile) plan may have: 48 MiB leaves headroom under the 64 MiB per core of
# v5p and v7x (v5e / v6e have 128 MiB). The scoped-VMEM request is the estimate plus a quarter, at least the
# 16 MiB Mosaic assumes by default.
VMEM_BUDGET = 48 * 2**20
VMEM_FLOOR = 16 * 2**20
# No code index reaches this (K < 2**31 - 1): it stands for "none" in the in-kernel index minima.
NO_INDEX = np.iinfo(np.int32).max


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _chunk(tile: int) -> int:
  """Codes scored per inner-loop step of a tile: the largest of 512, 256, 128 dividing it (else the tile)."""
  return next((size for size in (512, 256, 128) if tile % size == 0), tile)


def vmem_estimate(block_rows: int, tile: int, width: int, codebook_itemsize: int) -> int:
  """Upper estimate of the VMEM one grid step uses, in bytes.

  Fitted (with margin) to Mosaic's reported use on v5p at D in {128, 768, 1536}: per z element 24 bytes (the
  double-buffered fp32 block and the bf16 splits of the HIGHEST-precision matmul), per codebook element two
  buffers of its dtype, 12 bytes per score of one chunk (scores, indices, masks), plus 1 MiB for the rest.
  """
  return (24 * block_rows * width + 2 * codebook_itemsize * tile * width + 12 * block_rows * _chunk(tile)
          + 2**20)


def plan_blocks(num_rows: int, num_codes: int, width: int, codebook_itemsize: int, *, block_rows: int,
                tile_size: int, interpret: bool) -> tuple[int, int]:
  """(rows, tile) of one grid step; raises ValueError for block sizes the kernel cannot take (before any trace).

  rows = min(block_rows, N rounded up to 8); tile = min(tile_size, K rounded up to 128), then on TPU halved
  while the step's VMEM estimate exceeds VMEM_BUDGET (halving keeps a tile that divides K dividing it). On TPU
  block_rows must be a multiple of 8 and tile_size of 128 (the 32-bit tile); D is always a full block dim, so
  it needs no alignment. Interpret mode has no VMEM and no tiling rules: only positivity is checked.
  """
  for name, value in (("block_rows", block_rows), ("tile_size", tile_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"pallas_codebook_argmax: {name} must be a positive int, got {value!r}")
  if not interpret and block_rows % SUBLANES:
    raise ValueError(f"pallas_codebook_argmax: block_rows {block_rows} must be a multiple of {SUBLANES} on TPU "
                     f"(the sublanes of a 32-bit tile)")
  if not interpret and tile_size % LANES:
    raise ValueError(f"pallas_codebook_argmax: tile_size {tile_size} must be a multiple of {LANES} on TPU "
                     f"(the lanes of a 32-bit tile)")
  rows = min(int(block_rows), _round_up(max(num_rows, 1), SUBLANES))
  tile = min(int(tile_size), _round_up(num_codes, LANES))
  if interpret:
    return rows, tile
  while vmem_estimate(rows, tile, width, codebook_itemsize) > VMEM_BUDGET and tile % (2 * LANES) == 0:
    tile //= 2
  need = vmem_estimate(rows, tile, width, codebook_itemsize)
  if need > VMEM_BUDGET:
    raise ValueError(f"pallas_codebook_argmax: block_rows {rows} x D {width} with a {tile}-code tile needs about "
                     f"{need / 2**20:.1f} MiB of VMEM, over the {VMEM_BUDGET // 2**20} MiB budget; lower block_rows")
  return rows, tile


def _argmax_kernel(*refs, num_codes: int, tile: int, num_tiles: int, has_bias: bool):
  """One (row block i, code tile j) step; j is the innermost grid axis, so the scratch carries row block i.

  refs: z [R, D] fp32, codebook [T, D], (bias [1, T] fp32), out [R, 1] int32; scratch: best score [R, 1] fp32,
  its index [R, 1] int32, first NaN index [R, 1] int32 (NO_INDEX while none). The tile is scored in chunks of
  C codes (a loop, not unrolled), which bounds the [R, C] temporaries and the kernel's code size.
  """
  if has_bias:
    z_ref, codebook_ref, bias_ref, out_ref, best_ref, index_ref, nan_ref = refs
  else:
    (z_ref, codebook_ref, out_ref, best_ref, index_ref, nan_ref), bias_ref = refs, None
  j = pl.program_id(1)
  chunk = _chunk(tile)

  @pl.when(j == 0)
  def _init():
    best_ref[...] = jnp.full(best_ref.shape, -jnp.inf, jnp.float32)
    index_ref[...] = jnp.zeros(index_ref.shape, jnp.int32)
    nan_ref[...] = jnp.full(nan_ref.shape, NO_INDEX, jnp.int32)

  def score_chunk(c, carry):
    best, best_index, first_nan = carry  # [R, 1] each
    start = pl.multiple_of(c * chunk, chunk)
    rows = codebook_ref[pl.ds(start, chunk), :].astype(jnp.float32)  # [C, D]
    scores = lax.dot_general(z_ref[...], rows, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                             preferred_element_type=jnp.float32)  # [R, C]
    if bias_ref is not None:
      scores = scores + bias_ref[:, pl.ds(start, chunk)]  # [R, C] + [1, C]
    index = j * tile + start + lax.broadcasted_iota(jnp.int32, scores.shape, 1)  # [R, C] code indices
    real = index < num_codes  # padded codes never win, whatever their scores
    # The first NaN is tracked on its own and overrides the best number at the end, so whether max skips NaNs
    # (XLA:CPU's vectorised max, which interpret mode uses) or propagates them cannot change the result.
    chunk_nan = jnp.min(jnp.where(real & (scores != scores), index, NO_INDEX), axis=1, keepdims=True)  # [R, 1]
    scores = jnp.where(real, scores, -jnp.inf)  # [R, C]
    chunk_best = jnp.max(scores, axis=1, keepdims=True)  # [R, 1]
    chunk_index = jnp.min(jnp.where(scores == chunk_best, index, NO_INDEX), axis=1, keepdims=True)
    # A later chunk replaces the running best only when strictly greater: equal maxima keep the smaller index.
    better = chunk_best > best
    return (jnp.where(better, chunk_best, best), jnp.where(better, chunk_index, best_index),
            jnp.minimum(first_nan, chunk_nan))

  best, best_index, first_nan = lax.fori_loop(0, tile // chunk, score_chunk,
                                              (best_ref[...], index_ref[...], nan_ref[...]))
  best_ref[...], index_ref[...], nan_ref[...] = best, best_index, first_nan

  @pl.when(j == num_tiles - 1)
  def _write():
    out_ref[...] = jnp.where(first_nan != NO_INDEX, first_nan, best_index)


@functools.partial(jax.jit, static_argnames=("rows", "tile", "interpret"))
def _fused_argmax(z, codebook, bias, rows: int, tile: int, interpret: bool):
  """z [N, D] fp32, codebook [K, D], bias [K] fp32 or None -> int32 [N]."""
  num_rows, width = z.shape
  num_codes = codebook.shape[0]
  padded_rows, padded_codes = _round_up(num_rows, rows), _round_up(num_codes, tile)
  grid = (padded_rows // rows, padded_codes // tile)
  z = jnp.pad(z, ((0, padded_rows - num_rows), (0, 0)))  # [N', D]
  codebook = jnp.pad(codebook, ((0, padded_codes - num_codes), (0, 0)))  # [K', D]; no copy when K' == K
  operands = [z, codebook]
  in_specs = [pl.BlockSpec((rows, width), lambda i, j: (i, 0)), pl.BlockSpec((tile, width), lambda i, j: (j, 0))]
  if bias is not None:
    operands.append(jnp.pad(bias, (0, padded_codes - num_codes), constant_values=-jnp.inf)[None, :])  # [1, K']
    in_specs.append(pl.BlockSpec((1, tile), lambda i, j: (0, j)))
  kernel = functools.partial(_argmax_kernel, num_codes=num_codes, tile=tile, num_tiles=grid[1],
                             has_bias=bias is not None)
  need = vmem_estimate(rows, tile, width, codebook.dtype.itemsize)
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((padded_rows, 1), jnp.int32),
      grid=grid,
      in_specs=in_specs,
      out_specs=pl.BlockSpec((rows, 1), lambda i, j: (i, 0)),
      scratch_shapes=[pltpu.VMEM((rows, 1), jnp.float32), pltpu.VMEM((rows, 1), jnp.int32),
                      pltpu.VMEM((rows, 1), jnp.int32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                                           vmem_limit_bytes=max(need + need // 4, VMEM_FLOOR)),
      cost_estimate=pl.CostEstimate(flops=2 * padded_rows * padded_codes * width, transcendentals=0,
                                    bytes_accessed=z.size * 4 + grid[0] * codebook.size * codebook.dtype.itemsize),
      interpret=interpret,
  )(*operands)  # [N', 1]
  return out[:num_rows, 0]


def pallas_codebook_argmax(z, codebook, *, bias=None, tile_size: int = TILE_SIZE, block_rows: int = BLOCK_ROWS,
                           interpret: bool = False) -> jax.Array:
  """argmax_k z . codebook[k] + bias[k] by the fused kernel (the "pallas" / "pallas_interpret" implementations).

  Grid (row blocks "parallel", code tiles "arbitrary" and innermost): each step brings a [tile, D] codebook
  block into VMEM, scores it against the [rows, D] queries in chunks of up to 512 codes (fp32 matmul at
  precision HIGHEST, [rows, chunk] scores in VMEM) and folds them into per-row VMEM scratch (best score, its
  index, first NaN index); the index is written once, after the last tile. No score reaches HBM, so peak
  memory does not grow with K. N is padded to the row block and K to the tile (padded codes are masked by index, and the
  bias pads with -inf); when K is not a multiple of the tile that padding copies the codebook once.

  Tie and NaN rules are those of `reference.streaming_codebook_argmax`: the smallest index among equal maxima;
  a NaN score ranks above every number, so the smallest index with a NaN score wins.

  Args:
    z: [..., D] query vectors, any float dtype (scored in fp32).
    codebook: [K, D], any float dtype (cast to fp32 tile by tile in VMEM).
    bias: optional [K] added to every score.
    tile_size: most codes per grid step; a multiple of 128 on TPU (see `plan_blocks` for the tile used).
    block_rows: most query rows per grid step; a multiple of 8 on TPU.
    interpret: run the kernel in Pallas' interpreter (any backend) instead of compiling it with Mosaic.

  Returns:
    int32 [...] code indices in [0, K).
  """
  flat_z, codebook, flat_bias = _flat_inputs("pallas_codebook_argmax", z, codebook, bias, tile_size)
  (num_rows, width), num_codes = flat_z.shape, codebook.shape[0]
  rows, tile = plan_blocks(num_rows, num_codes, width, codebook.dtype.itemsize, block_rows=block_rows,
                           tile_size=tile_size, interpret=bool(interpret))
  if num_rows == 0:
    return jnp.zeros(np.shape(z)[:-1], jnp.int32)
  codes = _fused_argmax(flat_z, codebook, None if bias is None else flat_bias, rows, tile, bool(interpret))
  return codes.reshape(np.shape(z)[:-1])
