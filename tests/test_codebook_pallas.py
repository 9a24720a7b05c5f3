"""Fused codebook argmax kernel: interpreted equality with the dense reference (ties, NaN, inf), TPU compilation.

Exact ties and infinities come from small-integer vectors and a Euclidean bias, so every score is exact in fp32
whatever the summation order; TPU programs are compiled for v5e / v5p topologies on this CPU host, never run.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.topologies import get_topology_desc
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from planx_jax import tatok
from planx_jax.kernels.codebook import (IMPLEMENTATIONS, choose_impl, codebook_argmax, dense_codebook_argmax,
                                        pallas_codebook_argmax, resolve_impl)
from planx_jax.kernels.codebook.pallas_tpu import VMEM_BUDGET, plan_blocks, vmem_estimate

# TA-Tok at scale 0: 729 codes per image, code width 1536, 65536 codes; 4 images over 4 TPU devices.
CODES_PER_IMAGE, CODE_DIM, NUM_CODES, IMAGES = 729, 1536, 65536, 4


def _normal(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _interpret(z, codebook, **kwargs):
  return np.asarray(pallas_codebook_argmax(z, codebook, interpret=True, **kwargs))


@pytest.mark.parametrize("z_shape, num_codes, tile_size, block_rows, with_bias, z_dtype", [
    ((300,), 1000, 256, 128, True, jnp.float32),  # N not a multiple of block_rows, K not of the tile
    ((2, 19), 1024, 256, 256, False, jnp.float32),  # [B, N, D]; one row block larger than N
    ((70,), 500, 128, 32, True, jnp.bfloat16),  # bf16 queries are scored in fp32
    ((45,), 333, 100, 12, False, jnp.float32),  # blocks off the TPU tiling: interpret mode takes them
])
def test_interpret_equals_dense(z_shape, num_codes, tile_size, block_rows, with_bias, z_dtype):
  z = jnp.asarray(_normal((*z_shape, 24), 0), z_dtype)
  codebook = _normal((num_codes, 24), 1)
  bias = _normal((num_codes,), 2) if with_bias else None
  got = _interpret(z, codebook, bias=bias, tile_size=tile_size, block_rows=block_rows)
  assert got.shape == z_shape and got.dtype == np.int32
  np.testing.assert_array_equal(got, dense_codebook_argmax(z.astype(jnp.float32), codebook, bias))


def _integer_codebook(num_codes, width, seed):
  """Distinct small-integer rows; with bias -|c|^2 / 2 the score z.c - |c|^2 / 2 peaks exactly at c == z."""
  rows = np.random.RandomState(seed).randint(-3, 4, size=(num_codes, width)).astype(np.float32)
  assert len(np.unique(rows, axis=0)) == num_codes
  return rows


def _euclidean_bias(codebook):
  return -0.5 * np.sum(codebook * codebook, axis=-1)


def test_ties_pick_the_smallest_index_within_and_across_tiles():
  codebook = _integer_codebook(700, 12, 3)
  codebook[[300, 650]] = codebook[5]  # row 5 again in tile 2 and in the padded last tile (tile 128)
  codebook[[41, 100]] = codebook[40]  # row 40 twice more inside tile 0
  bias = _euclidean_bias(codebook)
  z = codebook[[650, 300, 5, 100, 41, 17]]
  got = _interpret(z, codebook, bias=bias, tile_size=128, block_rows=8)
  np.testing.assert_array_equal(got, [5, 5, 5, 40, 40, 17])
  np.testing.assert_array_equal(got, dense_codebook_argmax(z, codebook, bias))
  # Without a bias a zero query scores 0 everywhere: the first code wins.
  assert _interpret(np.zeros((3, 12), np.float32), codebook, tile_size=128, block_rows=8).tolist() == [0, 0, 0]


def test_nan_scores_rank_highest_and_the_first_wins():
  codebook = _integer_codebook(700, 12, 4)
  bias = _euclidean_bias(codebook)
  z = codebook[[3, 690, 250]].copy()
  z_nan_row = z.copy()
  z_nan_row[1, 4] = np.nan  # a NaN query: every score of that row is NaN -> code 0
  got = _interpret(z_nan_row, codebook, bias=bias, tile_size=128, block_rows=8)
  np.testing.assert_array_equal(got, [3, 0, 250])
  nan_codes = codebook.copy()
  nan_codes[[400, 650], 7] = np.nan  # NaN scores at codes 400 and 650 for every query
  nan_bias = bias.copy()
  nan_bias[[520, 130]] = [np.nan, np.inf]  # another NaN at 520; +inf at 130 ranks below any NaN
  got = _interpret(z, nan_codes, bias=nan_bias, tile_size=128, block_rows=8)
  np.testing.assert_array_equal(got, [400, 400, 400])
  np.testing.assert_array_equal(got, dense_codebook_argmax(z, nan_codes, nan_bias))


def test_infinite_scores():
  codebook = _integer_codebook(700, 12, 5)
  bias = _euclidean_bias(codebook)
  z = codebook[[3, 690, 250]]
  inf_bias = bias.copy()
  inf_bias[[600, 200]] = np.inf  # +inf beats every number; the first +inf wins
  np.testing.assert_array_equal(_interpret(z, codebook, bias=inf_bias, tile_size=128, block_rows=8), [200] * 3)
  minus_inf = bias.copy()
  minus_inf[[3, 690]] = -np.inf  # the exact matches drop out: the next best code wins, as in the dense argmax
  got = _interpret(z, codebook, bias=minus_inf, tile_size=128, block_rows=8)
  assert got[2] == 250 and got[0] not in (3, 690) and got[1] not in (3, 690)
  np.testing.assert_array_equal(got, dense_codebook_argmax(z, codebook, minus_inf))
  all_minus_inf = np.full(700, -np.inf, np.float32)
  assert _interpret(z, codebook, bias=all_minus_inf, tile_size=128, block_rows=8).tolist() == [0, 0, 0]
  z_inf = z.copy()
  z_inf[0, 2], z_inf[1, 5] = np.inf, -np.inf  # inf queries give +inf / -inf / NaN (inf * 0) scores
  got = _interpret(z_inf, codebook, bias=bias, tile_size=128, block_rows=8)
  np.testing.assert_array_equal(got, dense_codebook_argmax(z_inf, codebook, bias))


def test_padded_codes_never_win():
  codebook = np.abs(_integer_codebook(700, 12, 6)) + 1  # K = 700 pads to 768 codes of score 0 (tile 128)
  z = -np.ones((5, 12), np.float32)  # every real score is negative
  got = _interpret(z, codebook, tile_size=128, block_rows=8)
  assert got.max() < 700
  np.testing.assert_array_equal(got, dense_codebook_argmax(z, codebook))
  z_inf = np.ones((2, 12), np.float32)
  z_inf[:, 3] = np.inf  # +inf at every real code (no zero entries), inf * 0 = NaN at every padded one
  assert _interpret(z_inf, codebook, tile_size=128, block_rows=8).tolist() == [0, 0]


def test_registry_and_auto_dispatch(caplog, monkeypatch):
  assert {"xla", "pallas", "pallas_interpret"} <= set(IMPLEMENTATIONS)
  z, codebook = _normal((4, 8), 6), _normal((20, 8), 7)
  np.testing.assert_array_equal(codebook_argmax(z, codebook, tile_size=128, impl="pallas_interpret"),
                                codebook_argmax(z, codebook, tile_size=128, impl="xla"))
  with caplog.at_level(logging.INFO, logger="planx_jax.kernels.codebook"):
    assert choose_impl("auto", z, codebook, 128) == "xla"
  assert "backend is 'cpu'" in caplog.text
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert resolve_impl("auto") == "pallas"
  assert choose_impl("auto", z, codebook, 256) == "pallas"
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="planx_jax.kernels.codebook"):
    assert choose_impl("auto", z, codebook, 100) == "xla"  # not a multiple of 128: the kernel cannot take it
  assert "tile_size 100 must be a multiple of 128" in caplog.text
  with pytest.raises(ValueError, match="unknown codebook impl 'triton'"):
    choose_impl("triton", z, codebook, 128)


def _tiny_tatok_params(config):
  """Random tiny TA-Tok params filled in NumPy (faster than `tatok.init_params` here): N(0, 1) codebook and
  position embeddings, N(0, 0.05) elsewhere, unit norm scales, Tar's 0.5 scale layer."""
  rng = np.random.RandomState(9)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale_layer" in name:
      return np.full(leaf.shape, 0.5, np.float32)
    if name.endswith("['scale']"):
      return np.ones(leaf.shape, np.float32)
    return (rng.randn(*leaf.shape) * (1.0 if name.endswith("embedding']") else 0.05)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, tatok.abstract_params(config))


@pytest.mark.parametrize("l2_normalized", [True, False])  # cosine lookup (no bias) / Euclidean (bias)
def test_tatok_encode_with_the_interpreted_kernel_equals_xla(l2_normalized):
  config = tatok.TATokConfig.tiny(l2_normalized=l2_normalized, codebook_impl="pallas_interpret")
  params = _tiny_tatok_params(config)
  images = np.random.RandomState(8).rand(1, config.input_size, config.input_size, 3).astype(np.float32)
  got = np.asarray(tatok.encode(config, params, images, 0))
  want = np.asarray(tatok.encode(config.replace(codebook_impl="xla"), params, images, 0))
  assert got.shape == (1, CODES_PER_IMAGE)
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(got)) > 10  # the comparison is not between constant code maps


def test_tatok_config_validates_codebook_impl():
  with pytest.raises(ValueError, match="unknown codebook impl 'mosaic'"):
    tatok.TATokConfig.tiny(codebook_impl="mosaic")


# --- TPU compilation (v5e / v5p topologies, no TPU needed) ---------------------------------------------------


def _mesh(topology):
  return Mesh(np.array(get_topology_desc(platform="tpu", topology_name=topology).devices).reshape(-1), ("rows",))


def _compile_lookup(mesh, num_codes, **kwargs):
  """The kernel at TA-Tok's lookup shape, rows sharded over the mesh, the codebook replicated; compiled, not run."""

  def lookup(z, codebook, bias):
    return pallas_codebook_argmax(z, codebook, bias=bias, **kwargs)

  sharded = jax.shard_map(lookup, mesh=mesh, in_specs=(P("rows"), P(), P()), out_specs=P("rows"),
                          check_vma=False)
  rows, replicated = NamedSharding(mesh, P("rows")), NamedSharding(mesh, P())
  args = (jax.ShapeDtypeStruct((IMAGES * CODES_PER_IMAGE, CODE_DIM), jnp.float32, sharding=rows),
          jax.ShapeDtypeStruct((num_codes, CODE_DIM), jnp.float32, sharding=replicated),
          jax.ShapeDtypeStruct((num_codes,), jnp.float32, sharding=replicated))
  return jax.jit(sharded).lower(*args).compile()


_COMPILED = {}


def _compiled(topology, num_codes, **kwargs):
  key = (topology, num_codes, tuple(sorted(kwargs.items())))
  if key not in _COMPILED:
    _COMPILED[key] = _compile_lookup(_mesh(topology), num_codes, **kwargs)
  return _COMPILED[key]


@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x1"])
def test_compiles_for_tpu_at_tatok_shape(topology):
  compiled = _compiled(topology, NUM_CODES, tile_size=tatok.TATokConfig.ta_tok().codebook_tile)
  assert "tpu_custom_call" in compiled.as_text()  # the Mosaic kernel, not an XLA fallback
  rows_per_device = IMAGES * CODES_PER_IMAGE // 4
  assert compiled.memory_analysis().temp_size_in_bytes < rows_per_device * NUM_CODES * 4 / 8


def test_peak_memory_does_not_grow_with_codebook_size():
  tile = tatok.TATokConfig.ta_tok().codebook_tile
  small = _compiled("v5p:2x2x1", NUM_CODES // 4, tile_size=tile).memory_analysis().temp_size_in_bytes
  full = _compiled("v5p:2x2x1", NUM_CODES, tile_size=tile).memory_analysis().temp_size_in_bytes
  assert small == full
  # The measure sees K-sized buffers: with K not a multiple of the tile the wrapper pads a codebook copy.
  small_pad, full_pad = (_compiled("v5p:2x2x1", k + 1, tile_size=512, block_rows=128).memory_analysis()
                         .temp_size_in_bytes for k in (NUM_CODES // 4, NUM_CODES))
  assert full_pad - small_pad >= (NUM_CODES - NUM_CODES // 4) * CODE_DIM * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"tile_size": 100}, "tile_size 100 must be a multiple of 128"),
    ({"block_rows": 12}, "block_rows 12 must be a multiple of 8"),
    ({"tile_size": 0}, "tile_size must be a positive int"),
])
def test_illegal_blocks_raise_before_lowering(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _compile_lookup(_mesh("v5e:2x2"), 1024, **kwargs)


def test_block_plan_halves_the_tile_into_the_vmem_budget():
  rows, tile = plan_blocks(CODES_PER_IMAGE, NUM_CODES, CODE_DIM, 4, block_rows=256, tile_size=4096, interpret=False)
  assert rows == 256 and tile % 128 == 0 and NUM_CODES % tile == 0 and tile < 4096
  assert vmem_estimate(rows, tile, CODE_DIM, 4) <= VMEM_BUDGET < vmem_estimate(rows, 2 * tile, CODE_DIM, 4)
  assert plan_blocks(5, 40, 24, 4, block_rows=256, tile_size=4096, interpret=False) == (8, 128)
  assert plan_blocks(5, 40, 24, 4, block_rows=12, tile_size=100, interpret=True) == (8, 100)
  with pytest.raises(ValueError, match="block_rows 2048 x D 1536 .* MiB of VMEM"):  # z block alone is too big
    plan_blocks(8192, NUM_CODES, CODE_DIM, 4, block_rows=2048, tile_size=2048, interpret=False)
