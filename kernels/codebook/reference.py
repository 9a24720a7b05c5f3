"""Pure-JAX codebook lookup: streaming argmax / Gumbel-max sampling over codebook tiles, and the dense reference.

Scores are `z . codebook[k] + bias[k]` in fp32 (precision HIGHEST); the streaming forms keep a running best
per row and never hold more than [N, tile] scores. Cosine vs Euclidean matching is the caller's choice of inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _flat_inputs(name: str, z, codebook, bias, tile_size: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Validates shapes (static, before any trace) and returns z as [N, D], codebook [K, D], bias [K] (fp32)."""
  if np.ndim(z) < 1:
    raise ValueError(f"{name}: z must be [..., D], got shape {np.shape(z)}")
  if np.ndim(codebook) != 2:
    raise ValueError(f"{name}: codebook must be [K, D], got shape {np.shape(codebook)}")
  num_codes, width = np.shape(codebook)
  if num_codes < 1:
    raise ValueError(f"{name}: codebook needs at least one row, got shape {np.shape(codebook)}")
  if np.shape(z)[-1] != width:
    raise ValueError(f"{name}: z width {np.shape(z)[-1]} (shape {np.shape(z)}) != codebook width {width} "
                     f"(shape {np.shape(codebook)})")
  if bias is not None and np.shape(bias) != (num_codes,):
    raise ValueError(f"{name}: bias must be [K] = [{num_codes}], got shape {np.shape(bias)}")
  if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer))
                                or tile_size < 1):
    raise ValueError(f"{name}: tile_size must be a positive int, got {tile_size!r}")
  z = jnp.asarray(z, jnp.float32).reshape(-1, width)  # [N, D]
  bias = jnp.zeros((num_codes,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
  return z, jnp.asarray(codebook), bias


def _scores(z: jax.Array, rows: jax.Array, bias: jax.Array) -> jax.Array:
  """z [N, D] . rows [T, D] + bias [T] -> [N, T] fp32."""
  dots = jnp.einsum("nd,td->nt", z, rows.astype(jnp.float32), precision=lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)  # [N, T]
  return dots + bias[None, :]


def _beats(new: jax.Array, best: jax.Array) -> jax.Array:
  """True where `new` replaces `best` for a later index: strictly greater, or the first NaN (NaN ranks highest)."""
  return (new > best) | (jnp.isnan(new) & ~jnp.isnan(best))


def _stream(z: jax.Array, codebook: jax.Array, bias: jax.Array, tile_size: int, tile_noise) -> jax.Array:
  """Running argmax over codebook tiles of `tile_noise(tile_index, scores [N, T])`, int32 [N].

  Tiles are `tile = min(tile_size, K)` rows starting at i * tile; the last one starts at K - tile instead (so
  no padded copy of the codebook is made) and masks its rows already seen in tile i - 1 with -inf.
  """
  num_rows, num_codes = z.shape[0], codebook.shape[0]
  tile = min(tile_size, num_codes)
  num_tiles = -(-num_codes // tile)

  def step(carry, tile_index):
    best_score, best_index = carry  # [N], [N]
    first = tile_index * tile
    start = jnp.minimum(first, num_codes - tile)
    rows = lax.dynamic_slice_in_dim(codebook, start, tile, axis=0)  # [T, D]
    scores = _scores(z, rows, lax.dynamic_slice_in_dim(bias, start, tile))  # [N, T]
    index = start + jnp.arange(tile, dtype=jnp.int32)  # [T]
    scores = jnp.where(index[None, :] >= first, tile_noise(tile_index, scores), -jnp.inf)  # [N, T]
    local = jnp.argmax(scores, axis=-1)  # [N], first maximum (or first NaN) within the tile
    score = jnp.take_along_axis(scores, local[:, None], axis=-1)[:, 0]  # [N]
    better = _beats(score, best_score)
    return (jnp.where(better, score, best_score), jnp.where(better, index[local], best_index)), None

  init = (jnp.full((num_rows,), -jnp.inf, jnp.float32), jnp.zeros((num_rows,), jnp.int32))
  (_, best_index), _ = lax.scan(step, init, jnp.arange(num_tiles, dtype=jnp.int32))
  return best_index


@jax.jit(static_argnames=("tile_size",))
def _stream_argmax(z, codebook, bias, tile_size):
  return _stream(z, codebook, bias, tile_size, lambda tile_index, scores: scores)


@jax.jit(static_argnames=("tile_size",))
def _stream_sample(z, codebook, bias, rng, temperature, tile_size):
  def gumbel_perturbed(tile_index, scores):
    noise = jax.random.gumbel(jax.random.fold_in(rng, tile_index), scores.shape, jnp.float32)  # [N, T]
    return scores / temperature + noise

  return _stream(z, codebook, bias, tile_size, gumbel_perturbed)


def streaming_codebook_argmax(z, codebook, *, bias=None, tile_size: int = 4096) -> jax.Array:
  """argmax_k z . codebook[k] + bias[k], streamed over codebook tiles (the "xla" implementation).

  Peak memory is [N, tile] fp32 scores plus one [tile, D] slice of the codebook; the [N, K] matrix never exists.

  Tie rule: among equal maximal scores the smallest index wins, as `jnp.argmax` / `torch.argmax` pick on the
  dense [N, K] scores (within a tile argmax takes the first maximum; a later tile replaces the running best only
  when strictly greater). NaN rule, also theirs: a NaN score ranks above every number, so the smallest index
  with a NaN score wins (a NaN in z makes the whole row NaN and gives 0). The result therefore equals
  `dense_codebook_argmax` on every input whose scores the two compute identically.

  Args:
    z: [..., D] query vectors (any float dtype; computed in fp32). Leading dims are flattened and restored.
    codebook: [K, D], K >= 1.
    bias: optional [K] added to every score; `-|e_k|^2 / 2` turns this into the Euclidean argmin.
    tile_size: codebook rows per step (a positive int; tiles are min(tile_size, K) rows).

  Returns:
    int32 [...] code indices in [0, K).
  """
  flat_z, codebook, bias = _flat_inputs("codebook_argmax", z, codebook, bias, tile_size)
  return _stream_argmax(flat_z, codebook, bias, int(tile_size)).reshape(np.shape(z)[:-1])


def codebook_sample(z, codebook, rng: jax.Array, *, temperature: float, bias=None, tile_size: int = 4096) -> jax.Array:
  """One draw per row from softmax((z . codebook[k] + bias[k]) / temperature) without the [N, K] matrix.

  Gumbel-max trick per tile: Gumbel noise from `jax.random.fold_in(rng, tile_index)` is added to each tile's
  scaled scores and the running argmax (same rule as `streaming_codebook_argmax`) picks the code. The
  distribution does not depend on tile_size but the individual draws for a given rng do (the noise of code k
  comes from the tile that holds it) and on the flattened row count N. Peak memory is a few [N, tile]
  buffers: scores, the noise and the RNG's temporaries (threefry on CPU: about seven at tile 4096).

  Args:
    z: [..., D]; codebook: [K, D]; bias: optional [K]; tile_size: as in `streaming_codebook_argmax`.
    rng: a jax PRNG key.
    temperature: a Python number > 0 (Tar's stochastic quantizer uses 0.03).

  Returns:
    int32 [...] sampled code indices.
  """
  is_number = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, bool)
  if not (is_number and temperature > 0):
    raise ValueError(f"codebook_sample: temperature must be a number > 0, got {temperature!r}")
  flat_z, codebook, bias = _flat_inputs("codebook_sample", z, codebook, bias, tile_size)
  draws = _stream_sample(flat_z, codebook, bias, rng, jnp.float32(temperature), int(tile_size))
  return draws.reshape(np.shape(z)[:-1])


def dense_codebook_argmax(z, codebook, bias=None) -> jax.Array:
  """jnp.argmax over the full [N, K] fp32 score matrix: the reference the streaming forms are tested against."""
  flat_z, codebook, bias = _flat_inputs("dense_codebook_argmax", z, codebook, bias, None)
  scores = _scores(flat_z, codebook, bias)  # [N, K]
  return jnp.argmax(scores, axis=-1).astype(jnp.int32).reshape(np.shape(z)[:-1])
