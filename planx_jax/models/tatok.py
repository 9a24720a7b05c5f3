"""TA-Tok as pure functions of (config, params, arrays): images -> codes, codes -> codebook vectors / features.

Encode: [0, 1] images -> Tar's scale layer -> resize -> SigLIP `hidden_states[select_layer]`
-> scale-adaptive average pooling -> task layer (Linear + tanh) -> `in_linear` -> codebook
lookup (streamed argmax, or a temperature draw). Decode: codes -> normalised codebook rows
(the DiT's stage-1 semantic input) -> `out_linear` -> NaFlex decoder -> decode task layer.
Input checks and checkpoint I/O live in `planx_jax.tatok` / `convert/tatok_tar.py`.
"""

import functools

import jax
import jax.numpy as jnp

from planx_jax.kernels.codebook import codebook_argmax, codebook_sample
from planx_jax.models.resize import resize_images
from planx_jax.models.siglip import SigLIPVision
from planx_jax.models.tatok_config import TATokConfig

HIGHEST = jax.lax.Precision.HIGHEST
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(|x|, 1e-12) over the last axis, in fp32 (torch's F.normalize)."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def linear(params: dict, x: jax.Array) -> jax.Array:
  """x @ kernel + bias in fp32 (kernel [in, out])."""
  return jnp.dot(x.astype(jnp.float32), params["kernel"].astype(jnp.float32), precision=HIGHEST) + params["bias"]


def pool_features(feats: jax.Array, grid: int, pool: int) -> jax.Array:
  """Non-overlapping pool x pool average pooling of row-major grid tokens, floor mode.

  [B, grid*grid, C] -> [B, (grid//pool)**2, C]; trailing rows / columns that do not
  fill a window are dropped (13x13 from 27x27 at pool 2), as torch's avg_pool2d does.
  """
  b, n, c = feats.shape
  if n != grid * grid:
    raise ValueError(f"expected {grid}x{grid} = {grid * grid} tokens, got {n}")
  if pool == 1:
    return feats
  out = grid // pool
  x = feats.reshape(b, grid, grid, c)[:, : out * pool, : out * pool]
  x = x.reshape(b, out, pool, out, pool, c).astype(jnp.float32)  # [B, h, p, w, p, C]
  return jnp.mean(x, axis=(2, 4)).reshape(b, out * out, c).astype(feats.dtype)


def codebook_vectors(config: TATokConfig, params: dict) -> jax.Array:
  """The lookup table C = embedding_proj(embedding) [K, D] fp32, L2-normalised when `l2_normalized`."""
  bottleneck = params["bottleneck"]
  table = linear(bottleneck["embedding_proj"], bottleneck["embedding"])  # [K, D]
  return l2_normalize(table) if config.l2_normalized else table


def codebook_bias(config: TATokConfig, codebook: jax.Array) -> jax.Array | None:
  """Score offset making Euclidean argmin an argmax (-|e|^2 / 2); None for cosine lookup."""
  if config.l2_normalized:
    return None
  return -0.5 * jnp.sum(codebook * codebook, axis=-1)


def bottleneck_inputs(config: TATokConfig, params: dict, images: jax.Array, scale: int) -> jax.Array:
  """[B, H, W, 3] in [0, 1] -> z [B, N, D] fp32 (before quantization; normalised for cosine lookup)."""
  shift = params["scale_layer"]["shift"].astype(jnp.float32)
  scale_div = params["scale_layer"]["scale"].astype(jnp.float32)
  x = (images.astype(jnp.float32) - shift) / scale_div  # [B, H, W, 3] in [-1, 1]
  size = config.input_size
  if x.shape[1:3] != (size, size):
    x = resize_images(x, (size, size), config.resize)
  tower = SigLIPVision(config.encoder).apply({"params": params["encoder"]}, x,
                                              num_layers=config.encoder_layers_run)
  feats = tower["hidden_states"][-1]  # [B, grid*grid, hidden]: hidden_states[select_layer]
  feats = pool_features(feats, config.grid_size, config.pool_size(scale))  # [B, N, hidden]
  feats = jnp.tanh(linear(params["encode_task_layer"], feats))
  z = linear(params["bottleneck"]["in_linear"], feats)  # [B, N, D]
  return l2_normalize(z) if config.l2_normalized else z


@functools.partial(jax.jit, static_argnames=("config", "scale", "temperature"))
def encode_codes(config: TATokConfig, params: dict, images: jax.Array, scale: int, codebook: jax.Array | None = None,
                 rng: jax.Array | None = None, temperature: float | None = None) -> jax.Array:
  """Codes [B, N] int32. Argmax (smallest index on ties) unless `rng` is given, then a draw at `temperature`."""
  z = bottleneck_inputs(config, params, images, scale)
  if codebook is None:
    codebook = codebook_vectors(config, params)
  bias = codebook_bias(config, codebook)
  if rng is None:
    return codebook_argmax(z, codebook, bias=bias, tile_size=config.codebook_tile, impl=config.codebook_impl)
  return codebook_sample(z, codebook, rng, temperature=temperature or config.temperature, bias=bias,
                         tile_size=config.codebook_tile)


@functools.partial(jax.jit, static_argnames=("config",))
def code_embeddings(config: TATokConfig, params: dict, codes: jax.Array) -> jax.Array:
  """Codebook rows of `codes` [..., N] -> [..., N, D] fp32, computed for those rows only.

  As Tar's `get_codebook_entry`: rows of the normalised table, normalised again.
  """
  bottleneck = params["bottleneck"]
  rows = jnp.take(bottleneck["embedding"], codes, axis=0)  # [..., N, D]
  vectors = linear(bottleneck["embedding_proj"], rows)
  return l2_normalize(l2_normalize(vectors)) if config.l2_normalized else vectors


@functools.partial(jax.jit, static_argnames=("config",))
def decode_codes(config: TATokConfig, params: dict, codes: jax.Array) -> jax.Array:
  """Codes [B, N] (N a square) -> SigLIP-like features [B, N, hidden] through the NaFlex decoder."""
  b, n = codes.shape
  side = round(n**0.5)
  z = linear(params["bottleneck"]["out_linear"], code_embeddings(config, params, codes))  # [B, N, D]
  tower = SigLIPVision(config.decoder).apply({"params": params["decoder"]}, z.reshape(b, side, side, -1))
  h = tower["last_hidden_state"]  # [B, N, hidden]
  task = params["decode_task_layer"]
  return linear(task["fc2"], jnp.tanh(linear(task["fc1"], h)))
