"""Video <-> normalised latents with the Wan VAE: input checks, pixel patchify, latent normalisation, and the
causal chunk loops (encode: frame 0, then chunks; decode: one latent frame at a time through a carried cache).

Pure functions of (config, params, arrays); the modules are in `models/vae.py`. Unlike diffusers'
`AutoencoderKLWan.encode`, which returns the raw posterior, `encode` returns `(mu - latents_mean) /
latents_std` (what Wan pipelines feed the DiT) and `decode` takes such normalised latents.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.models.layers import dtype_of
from planx_jax.models.vae import WanVAE
from planx_jax.models.vae_config import VAEConfig


@flax.struct.dataclass
class DecodeCache:
  """Decoder state between chunks: each causal convolution's last input frames (a tree of arrays).

  `started` (static) is False until the clip's first latent frame has been decoded: that frame
  takes a different path through the time up-samplers.
  """

  features: dict
  started: bool = flax.struct.field(pytree_node=False, default=False)


# --- input checks (before any trace) ---------------------------------------------------------------------


def _shape_of(x, what: str, rank: int) -> tuple[int, ...]:
  shape = tuple(np.shape(x))
  if len(shape) != rank:
    raise ValueError(f"{what} must have rank {rank}, got shape {shape}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{what} must be floating point, got dtype {jnp.result_type(x)}")
  return shape


def check_video(config: VAEConfig, video) -> tuple[int, ...]:
  """video [B, T, H, W, C]: T = 1 + scale_factor_temporal * k, H and W multiples of scale_factor_spatial."""
  b, t, h, w, c = shape = _shape_of(video, "video [B, T, H, W, C]", 5)
  if c != config.video_channels:
    raise ValueError(f"video has {c} channels (shape {shape}); the VAE expects {config.video_channels}")
  st, ss = config.scale_factor_temporal, config.scale_factor_spatial
  if b < 1:
    raise ValueError(f"video has an empty batch: shape {shape}")
  if t < 1 or (t - 1) % st:
    raise ValueError(f"video has {t} frames (shape {shape}); expected 1 + {st} k frames (1, {1 + st}, "
                     f"{1 + 2 * st}, ...)")
  if h < 1 or w < 1 or h % ss or w % ss:
    raise ValueError(f"video is {h}x{w} (shape {shape}); height and width must be positive multiples of {ss}")
  return shape


def check_latents(config: VAEConfig, latents) -> tuple[int, ...]:
  b, t, h, w, c = shape = _shape_of(latents, "latents [B, T, h, w, z_dim]", 5)
  if c != config.z_dim:
    raise ValueError(f"latents have {c} channels (shape {shape}); the VAE expects z_dim={config.z_dim}")
  if min(b, t, h, w) < 1:
    raise ValueError(f"latents have an empty axis: shape {shape}")
  return shape


# --- pixel patchify and latent statistics ----------------------------------------------------------------


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H/p, W/p, C p p]; channel c * p^2 + j * p + i holds pixel (row i, column j)."""
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)  # [B, T, h, w, C, j, i]
  return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
  """Inverse of `patchify`: [B, T, h, w, C p p] -> [B, T, h p, w p, C]."""
  if p == 1:
    return x
  b, t, h, w, cpp = x.shape
  x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)  # [B, T, h, i, w, j, C]
  return x.reshape(b, t, h * p, w * p, cpp // (p * p))


def _latent_stats(config: VAEConfig) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(config.latents_mean, jnp.float32), jnp.asarray(config.latents_std, jnp.float32)


def normalise(config: VAEConfig, mu: jax.Array) -> jax.Array:
  mean, std = _latent_stats(config)
  return ((mu.astype(jnp.float32) - mean) / std).astype(mu.dtype)


def denormalise(config: VAEConfig, latents: jax.Array) -> jax.Array:
  mean, std = _latent_stats(config)
  return (latents.astype(jnp.float32) * std + mean).astype(dtype_of(config.dtype))


# --- encode --------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode_chunk(config: VAEConfig, params: dict, frames: jax.Array, cache: dict | None, first: bool):
  """Video frames [B, n, H, W, C] -> (normalised mu [B, n', h, w, z_dim], encoder cache)."""
  x = patchify(frames.astype(dtype_of(config.dtype)), config.patch_size)  # [B, n, H/p, W/p, in_channels]
  stats, cache = WanVAE(config).apply({"params": params}, x, cache, first, method=WanVAE.encode_chunk)
  return normalise(config, stats[..., :config.z_dim]), cache  # stats [B, n', h, w, 2 z_dim], mu first


def encode(config: VAEConfig, params: dict, video) -> jax.Array:
  """video [B, T, H, W, 3] in [-1, 1] -> normalised posterior means [B, 1 + (T-1)/4, H/s, W/s, z_dim].

  As diffusers does: frame 0 alone, then chunks of `scale_factor_temporal` (4) frames, the causal
  cache carried from chunk to chunk. Each chunk is one jitted call (compiled once per frame size),
  so memory does not grow with the clip beyond the latents.
  """
  check_video(config, video)
  video, params = jnp.asarray(video), jax.tree.map(jnp.asarray, params)  # numpy params: one transfer, not one per chunk
  latents, cache = _encode_chunk(config, params, video[:, :1], None, True)
  pieces, chunk = [latents], config.scale_factor_temporal
  for start in range(1, video.shape[1], chunk):
    latents, cache = _encode_chunk(config, params, video[:, start:start + chunk], cache, False)
    pieces.append(latents)
  return jnp.concatenate(pieces, axis=1)


# --- decode --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _decode_cache_shapes(config: VAEConfig, batch: int, latent_height: int, latent_width: int):
  z = jax.ShapeDtypeStruct((batch, 1, latent_height, latent_width, config.z_dim), jnp.float32)
  (_, shapes), _ = jax.eval_shape(lambda z: WanVAE(config).init_with_output(
      jax.random.key(0), z, None, True, method=WanVAE.decode_chunk), z)
  return shapes


def init_decode_cache(config: VAEConfig, batch: int, latent_height: int, latent_width: int) -> DecodeCache:
  """All-zero decoder cache for a clip of [batch, *, latent_height, latent_width] latents (nothing decoded yet)."""
  if min(batch, latent_height, latent_width) < 1:
    raise ValueError(f"batch, latent_height and latent_width must be positive, got {batch}, {latent_height}, "
                     f"{latent_width}")
  shapes = _decode_cache_shapes(config, batch, latent_height, latent_width)
  return DecodeCache(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), started=False)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_chunk(config: VAEConfig, params: dict, latents: jax.Array, features: dict, first: bool):
  z = denormalise(config, latents)
  video, features = WanVAE(config).apply({"params": params}, z, features, first, method=WanVAE.decode_chunk)
  return jnp.clip(unpatchify(video, config.patch_size), -1.0, 1.0), features


def decode_chunk(config: VAEConfig, params: dict, latents_chunk, cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
  """Decodes the next latent frames of a clip: [B, n, h, w, z_dim] -> ([B, F, H, W, 3] in [-1, 1], cache).

  F = 1 + 4 (n - 1) for the clip's first chunk and 4 n afterwards (4 = scale_factor_temporal). Any
  split of a clip into chunks gives the frames of `decode` on the whole clip.
  """
  b, _, h, w, _ = check_latents(config, latents_chunk)
  expected = cache.features["conv_in"].shape
  if (b, h, w) != (expected[0], expected[2], expected[3]):
    raise ValueError(f"latents chunk of shape {np.shape(latents_chunk)} does not match the cache, made for batch "
                     f"{expected[0]} and {expected[2]}x{expected[3]} latents")
  video, features = _decode_chunk(config, params, jnp.asarray(latents_chunk), cache.features, not cache.started)
  return video, DecodeCache(features, started=True)


def compile_decode_chunk(config: VAEConfig, params: dict, batch: int, latent_height: int, latent_width: int,
                         first: bool):
  """The compiled program `decode_chunk` runs for one latent frame (the clip's first, or a later one); for
  ahead-of-time cost and memory reports (`.memory_analysis()`, `.cost_analysis()`)."""
  features = init_decode_cache(config, batch, latent_height, latent_width).features
  latents = jax.ShapeDtypeStruct((batch, 1, latent_height, latent_width, config.z_dim), jnp.float32)
  return _decode_chunk.lower(config, params, latents, features, first).compile()


def decode(config: VAEConfig, params: dict, latents) -> jax.Array:
  """Normalised latents [B, T, h, w, z_dim] -> video [B, 1 + 4 (T-1), h s, w s, 3] clamped to [-1, 1].

  Causal, one latent frame at a time (as diffusers decodes) through `decode_chunk` with the cache
  carried over: two compiled programs (the first frame, any later frame) whatever the clip length,
  and activation memory that does not grow with the number of frames.
  """
  b, t, h, w, _ = check_latents(config, latents)
  latents, params = jnp.asarray(latents), jax.tree.map(jnp.asarray, params)  # one transfer, not one per frame
  cache = init_decode_cache(config, b, h, w)
  pieces = []
  for i in range(t):
    video, cache = decode_chunk(config, params, latents[:, i:i + 1], cache)
    pieces.append(video)
  return jnp.concatenate(pieces, axis=1)
