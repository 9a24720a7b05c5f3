"""Codebook lookup: streaming argmax equals the dense argmax (ties, NaN, bias), Gumbel-max sampling, peak memory.

Exact ties are built from small integers or one-hot queries so every score is exact in fp32 whatever the
summation order; oracles are NumPy (int64 / float64) and torch.argmax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from planx_jax.kernels.codebook import (IMPLEMENTATIONS, codebook_argmax, codebook_sample, dense_codebook_argmax,
                                        resolve_impl)


def _normal(shape, seed):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _torch_argmax(z, codebook, bias=None):
  scores = torch.tensor(z).reshape(-1, z.shape[-1]) @ torch.tensor(codebook).T
  if bias is not None:
    scores = scores + torch.tensor(bias)
  return torch.argmax(scores, dim=-1).reshape(z.shape[:-1]).numpy()


@pytest.mark.parametrize("num_codes, tile_size, batch_shape", [
    (1000, 256, (37,)),  # K not a multiple of the tile: the last tile overlaps the previous one
    (1024, 256, (2, 19)),  # K a multiple of the tile, [B, N, D]
    (7, 4096, (11,)),  # one tile larger than K
    (300, 1, (3, 4)),  # one row per step
])
def test_streaming_equals_dense(num_codes, tile_size, batch_shape):
  z = _unit(_normal((*batch_shape, 24), 0))
  codebook = _unit(_normal((num_codes, 24), 1))
  got = np.asarray(codebook_argmax(z, codebook, tile_size=tile_size))
  assert got.shape == batch_shape and got.dtype == np.int32
  np.testing.assert_array_equal(got, np.asarray(dense_codebook_argmax(z, codebook)))
  exact = np.einsum("...d,kd->...k", z.astype(np.float64), codebook.astype(np.float64))
  chosen = np.take_along_axis(exact, got[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(chosen, exact.max(-1), atol=1e-6, rtol=0)


def test_bf16_codebook_is_scored_in_fp32():
  z = _unit(_normal((16, 32), 2))
  codebook = jnp.asarray(_unit(_normal((500, 32), 3)), jnp.bfloat16)
  got = codebook_argmax(z, codebook, tile_size=64)
  np.testing.assert_array_equal(got, dense_codebook_argmax(z, codebook.astype(jnp.float32)))


def test_single_vector_gives_scalar_code():
  codebook = _unit(_normal((50, 8), 4))
  got = codebook_argmax(codebook[17], codebook, tile_size=16)
  assert got.shape == () and int(got) == 17


@pytest.mark.parametrize("tile_size", [1, 64, 100, 4096])
def test_integer_ties_pick_smallest_index(tile_size):
  rng = np.random.RandomState(5)
  z = rng.randint(-1, 2, size=(64, 5)).astype(np.float32)
  codebook = rng.randint(-1, 2, size=(300, 5)).astype(np.float32)
  exact = z.astype(np.int64) @ codebook.astype(np.int64).T  # [N, K] exact scores
  tied = exact == exact.max(-1, keepdims=True)  # [N, K]
  spans_tiles = [np.flatnonzero(row)[0] // 64 != np.flatnonzero(row)[-1] // 64 for row in tied]
  assert np.mean(spans_tiles) > 0.5, "most rows must tie across tiles of 64"
  got = np.asarray(codebook_argmax(z, codebook, tile_size=tile_size))
  np.testing.assert_array_equal(got, np.argmax(exact, -1))
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(exact), -1)))
  np.testing.assert_array_equal(got, _torch_argmax(z, codebook))


@pytest.mark.parametrize("first, duplicates", [
    (10, (100, 250, 290)),  # copies in later tiles, one in the last (overlapping) tile
    (240, (290, 299)),  # first copy sits in the overlap of tiles 3 and 4 (tile 64, K 300)
    (70, (71, 127)),  # copies inside the same tile
])
def test_duplicate_rows_pick_smallest_index(first, duplicates):
  rng = np.random.RandomState(6)
  codebook = rng.randint(-2, 3, size=(300, 8)).astype(np.float32)
  for k in (first, *duplicates):
    codebook[k] = 3.0  # the only rows reaching score 24 against z = ones
  z = np.ones((4, 8), np.float32)
  for tile_size in (64, 128):
    np.testing.assert_array_equal(codebook_argmax(z, codebook, tile_size=tile_size), first)
  np.testing.assert_array_equal(_torch_argmax(z, codebook), first)
  np.testing.assert_array_equal(dense_codebook_argmax(z, codebook), first)


@pytest.mark.parametrize("later", [6, 200])
def test_one_ulp_larger_later_code_wins(later):
  codebook = np.zeros((300, 4), np.float32)
  codebook[:, 0] = np.linspace(-1.0, 0.5, 300, dtype=np.float32)
  z = np.eye(4, dtype=np.float32)[:1]  # scores are exactly codebook[:, 0]
  codebook[5, 0] = 1.0
  codebook[later, 0] = 1.0
  assert int(codebook_argmax(z, codebook, tile_size=64)[0]) == 5
  codebook[later, 0] = np.nextafter(np.float32(1.0), np.float32(2.0))
  assert int(codebook_argmax(z, codebook, tile_size=64)[0]) == later
  assert int(dense_codebook_argmax(z, codebook)[0]) == later


def test_nan_scores_rank_highest_first_nan_wins():
  z = _unit(_normal((5, 8), 7))
  codebook = _unit(_normal((300, 8), 8))
  codebook[150, 3] = np.nan
  codebook[220, 0] = np.nan
  z[2, 1] = np.nan  # a NaN query: every score NaN
  got = np.asarray(codebook_argmax(z, codebook, tile_size=64))
  np.testing.assert_array_equal(got, [150, 150, 0, 150, 150])
  np.testing.assert_array_equal(got, np.asarray(dense_codebook_argmax(z, codebook)))
  np.testing.assert_array_equal(got, _torch_argmax(z, codebook))
  bias = np.zeros(300, np.float32)
  bias[40] = np.nan
  got = np.asarray(codebook_argmax(z, codebook, bias=bias, tile_size=64))
  np.testing.assert_array_equal(got, [40, 40, 0, 40, 40])
  np.testing.assert_array_equal(got, _torch_argmax(z, codebook, bias))


def test_bias_gives_euclidean_argmin():
  z = 2.0 * _normal((3, 40, 16), 9)
  codebook = _normal((1000, 16), 10)
  bias = -0.5 * np.sum(codebook * codebook, axis=-1)
  got = np.asarray(codebook_argmax(z, codebook, bias=bias, tile_size=128))
  diff = z.astype(np.float64)[..., None, :] - codebook.astype(np.float64)  # [B, N, K, D]
  np.testing.assert_array_equal(got, np.argmin(np.sum(diff * diff, axis=-1), axis=-1))


def test_sampling_at_tiny_temperature_is_argmax():
  z = _unit(_normal((64, 16), 11))
  codebook = _unit(_normal((500, 16), 12))
  scores = np.sort(z.astype(np.float64) @ codebook.astype(np.float64).T, axis=-1)
  temperature = 1e-7
  assert np.min(scores[:, -1] - scores[:, -2]) / temperature > 100, "top-2 gaps must dwarf the Gumbel noise"
  got = codebook_sample(z, codebook, jax.random.key(0), temperature=temperature, tile_size=64)
  np.testing.assert_array_equal(got, codebook_argmax(z, codebook))


def test_sampling_is_deterministic_per_key():
  z = _unit(_normal((2, 100, 16), 13))
  codebook = _unit(_normal((300, 16), 14))
  draw = lambda seed: np.asarray(codebook_sample(z, codebook, jax.random.key(seed), temperature=0.1, tile_size=64))
  first = draw(0)
  assert first.shape == (2, 100) and first.dtype == np.int32
  np.testing.assert_array_equal(first, draw(0))
  assert np.mean(first != draw(1)) > 0.3


@pytest.mark.parametrize("tile_size", [2, 4096])
def test_sampling_frequencies_match_softmax(tile_size):
  temperature = 0.5
  codebook = np.zeros((5, 3), np.float32)
  codebook[:, 0] = [0.2, -0.4, 0.5, 0.0, 0.1]
  bias = np.array([0.3, 0.0, -0.5, 0.25, 0.0], np.float32)
  draws = 40_000
  z = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (draws, 1))
  got = np.asarray(codebook_sample(z, codebook, jax.random.key(3), temperature=temperature, bias=bias,
                                   tile_size=tile_size))
  logits = (codebook[:, 0].astype(np.float64) + bias) / temperature
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  counts = np.bincount(got, minlength=5)
  sigma = np.sqrt(draws * probs * (1 - probs))
  assert np.all(np.abs(counts - draws * probs) < 5 * sigma), (counts, draws * probs)


def test_streaming_peak_memory_is_a_tile_not_the_score_matrix():
  n, k, d = 729, 65536, 64
  args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((k, d), jnp.float32))

  def temp_bytes(fn):
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    assert stats is not None, f"memory_analysis() unavailable on {jax.default_backend()}"
    return stats.temp_size_in_bytes

  score_matrix = n * k * 4
  assert temp_bytes(lambda z, c: dense_codebook_argmax(z, c)) >= score_matrix
  assert temp_bytes(lambda z, c: codebook_argmax(z, c, tile_size=4096)) < score_matrix / 8


def test_impl_registry():
  assert set(IMPLEMENTATIONS) == {"xla", "pallas", "pallas_interpret"}
  assert resolve_impl("auto") == "xla"
  z, codebook = _normal((4, 8), 15), _normal((20, 8), 16)
  np.testing.assert_array_equal(codebook_argmax(z, codebook, impl="auto", tile_size=8),
                                codebook_argmax(z, codebook, impl="xla", tile_size=8))


@pytest.mark.parametrize("z_shape, codebook_shape, kwargs, message", [
    ((), (10, 4), {}, "z must be"),
    ((3, 4), (40,), {}, "codebook must be"),
    ((3, 4), (0, 4), {}, "at least one row"),
    ((3, 5), (10, 4), {}, r"\(3, 5\).*\(10, 4\)"),
    ((3, 4), (10, 4), {"bias": np.zeros(9, np.float32)}, "bias must be"),
    ((3, 4), (10, 4), {"tile_size": 0}, "tile_size"),
    ((3, 4), (10, 4), {"tile_size": 2.5}, "tile_size"),
    ((3, 4), (10, 4), {"tile_size": True}, "tile_size"),
    ((3, 4), (10, 4), {"impl": "triton"}, "available: auto, xla, pallas, pallas_interpret"),
])
def test_bad_inputs_raise(z_shape, codebook_shape, kwargs, message):
  z, codebook = np.zeros(z_shape, np.float32), np.zeros(codebook_shape, np.float32)
  with pytest.raises(ValueError, match=message):
    codebook_argmax(z, codebook, **kwargs)


@pytest.mark.parametrize("temperature", [0.0, -1.0, None, True])
def test_sampling_rejects_bad_temperature(temperature):
  with pytest.raises(ValueError, match="temperature"):
    codebook_sample(np.zeros((2, 4), np.float32), np.ones((10, 4), np.float32), jax.random.key(0),
                    temperature=temperature)
