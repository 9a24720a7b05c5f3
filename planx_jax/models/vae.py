"""Flax Linen Wan causal video VAE (diffusers `AutoencoderKLWan`, Wan2.1 and Wan2.2 flavours): encoder and decoder
stages over chunks of frames with explicit caches. Patchify, normalisation and the chunk loop: `models/vae_coding.py`.

Module and param names follow diffusers' state dict ("down_blocks_0" for `down_blocks.0`), so the
conversion table in `convert/wan_vae.py` is derived from the param tree.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from planx_jax.models.layers import dtype_of
from planx_jax.models.vae_blocks import (AttentionBlock, CausalConv3d, ChannelRMSNorm, Resample, ResidualBlock,
                                         avg_down, dup_up, sub_cache)
from planx_jax.models.vae_config import VAEConfig


def _dtypes(config: VAEConfig) -> dict:
  return dict(dtype=dtype_of(config.dtype), param_dtype=dtype_of(config.param_dtype))


class MidBlock(nn.Module):
  """Residual block, per-frame attention, residual block."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
    kw = _dtypes(self.config)
    width = x.shape[-1]
    x, first = ResidualBlock(width, name="resnets_0", **kw)(x, sub_cache(cache, "resnets_0"))
    x = AttentionBlock(name="attentions_0", attention_impl=self.config.attention_impl, **kw)(x)
    x, second = ResidualBlock(width, name="resnets_1", **kw)(x, sub_cache(cache, "resnets_1"))
    return x, {"resnets_0": first, "resnets_1": second}


class ResidualDownBlock(nn.Module):
  """Wan2.2 encoder stage: residual blocks and a down-sampler, plus an average-down shortcut of the input."""

  config: VAEConfig
  features: int
  temporal: bool
  spatial: bool

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    kw = _dtypes(self.config)
    shortcut = avg_down(x, self.features, 2 if self.temporal else 1, 2 if self.spatial else 1)
    new_cache = {}
    for k in range(self.config.num_res_blocks):
      x, new_cache[f"resnets_{k}"] = ResidualBlock(self.features, name=f"resnets_{k}", **kw)(
          x, sub_cache(cache, f"resnets_{k}"))
    if self.spatial:
      mode = "downsample3d" if self.temporal else "downsample2d"
      x, new_cache["downsampler"] = Resample(mode, self.features, name="downsampler", **kw)(
          x, sub_cache(cache, "downsampler"), first)
    return x + shortcut.astype(x.dtype), new_cache


class UpBlock(nn.Module):
  """Decoder stage: num_res_blocks + 1 residual blocks and an up-sampler.

  Wan2.1 (`residual` False): the up-sampler halves the width, under `upsamplers_0`. Wan2.2: it keeps
  the width, under `upsampler`, and a duplicate-up shortcut of the stage input is added.
  """

  config: VAEConfig
  features: int
  mode: str | None  # "upsample2d", "upsample3d" or None (last stage)

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    kw = _dtypes(self.config)
    residual = self.config.is_residual
    shortcut = None
    if residual and self.mode is not None:
      shortcut = dup_up(x, self.features, 2 if self.mode == "upsample3d" else 1, 2, first)
    new_cache = {}
    for k in range(self.config.num_res_blocks + 1):
      x, new_cache[f"resnets_{k}"] = ResidualBlock(self.features, name=f"resnets_{k}", **kw)(
          x, sub_cache(cache, f"resnets_{k}"))
    if self.mode is not None:
      name = "upsampler" if residual else "upsamplers_0"
      width = self.features if residual else self.features // 2
      x, new_cache[name] = Resample(self.mode, width, name=name, **kw)(x, sub_cache(cache, name), first)
    if shortcut is not None:
      x = x + shortcut.astype(x.dtype)
    return x, new_cache


class Encoder(nn.Module):
  """Patchified video chunk [B, T, H, W, in_channels] -> [B, T', H / 2^n, W / 2^n, 2 z_dim] (mean, log-variance)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    cfg, kw = self.config, _dtypes(self.config)
    dims, last = cfg.encoder_dims, len(cfg.dim_mult) - 1
    new_cache = {}
    x, new_cache["conv_in"] = CausalConv3d(dims[0], name="conv_in", **kw)(x, sub_cache(cache, "conv_in"))
    index = 0  # Wan2.1 lists residual blocks and down-samplers flat: down_blocks_0, down_blocks_1, ...
    for i, width in enumerate(dims[1:]):
      temporal = i != last and cfg.temporal_downsample[i]
      if cfg.is_residual:
        name = f"down_blocks_{i}"
        x, new_cache[name] = ResidualDownBlock(cfg, width, temporal, i != last, name=name)(
            x, sub_cache(cache, name), first)
        continue
      for _ in range(cfg.num_res_blocks):
        name = f"down_blocks_{index}"
        x, new_cache[name] = ResidualBlock(width, name=name, **kw)(x, sub_cache(cache, name))
        index += 1
      if i != last:
        name = f"down_blocks_{index}"
        mode = "downsample3d" if temporal else "downsample2d"
        x, new_cache[name] = Resample(mode, width, name=name, **kw)(x, sub_cache(cache, name), first)
        index += 1
    x, new_cache["mid_block"] = MidBlock(cfg, name="mid_block")(x, sub_cache(cache, "mid_block"))
    x = nn.silu(ChannelRMSNorm(name="norm_out", **kw)(x))
    x, new_cache["conv_out"] = CausalConv3d(2 * cfg.z_dim, name="conv_out", **kw)(x, sub_cache(cache, "conv_out"))
    return x, new_cache


class Decoder(nn.Module):
  """Latent chunk [B, t, h, w, z_dim] -> patchified video [B, T, h 2^n, w 2^n, out_channels].

  The clip's first latent frame decodes to one frame, every later one to `scale_factor_temporal`.
  """

  config: VAEConfig

  @nn.compact
  def __call__(self, z: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    cfg, kw = self.config, _dtypes(self.config)
    dims, last = cfg.decoder_dims, len(cfg.dim_mult) - 1
    upsample = cfg.temporal_downsample[::-1]
    new_cache = {}
    x, new_cache["conv_in"] = CausalConv3d(dims[0], name="conv_in", **kw)(z, sub_cache(cache, "conv_in"))
    x, new_cache["mid_block"] = MidBlock(cfg, name="mid_block")(x, sub_cache(cache, "mid_block"))
    for i, width in enumerate(dims[1:]):
      mode = None if i == last else "upsample3d" if upsample[i] else "upsample2d"
      name = f"up_blocks_{i}"
      x, new_cache[name] = UpBlock(cfg, width, mode, name=name)(x, sub_cache(cache, name), first)
    x = nn.silu(ChannelRMSNorm(name="norm_out", **kw)(x))
    x, new_cache["conv_out"] = CausalConv3d(cfg.out_channels, name="conv_out", **kw)(x, sub_cache(cache, "conv_out"))
    return x, new_cache


class WanVAE(nn.Module):
  """Encoder + quant conv, post-quant conv + decoder. `__call__` exists to create every param (`init`)."""

  config: VAEConfig

  def setup(self):
    kw = _dtypes(self.config)
    z = self.config.z_dim
    self.encoder = Encoder(self.config)
    self.quant_conv = CausalConv3d(2 * z, (1, 1, 1), **kw)
    self.post_quant_conv = CausalConv3d(z, (1, 1, 1), **kw)
    self.decoder = Decoder(self.config)

  def encode_chunk(self, x: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    """Patchified frames -> latent statistics [B, t, h, w, 2 z_dim] (mu first), updated encoder cache."""
    h, cache = self.encoder(x, cache, first)
    stats, _ = self.quant_conv(h)
    return stats, cache

  def decode_chunk(self, z: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    """Raw (denormalised) latents -> patchified frames, updated decoder cache."""
    z, _ = self.post_quant_conv(z)
    return self.decoder(z, cache, first)

  def __call__(self, x: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: 1 + scale_factor_temporal frames, z: 2 latent frames; enough to reach every time conv."""
    stats, _ = self.encode_chunk(x, None, True)
    video, _ = self.decode_chunk(z, None, True)
    return stats, video


def example_inputs(config: VAEConfig) -> tuple[jax.Array, jax.Array]:
  """Smallest inputs of `WanVAE.__call__` (one latent pixel)."""
  side = 2**(len(config.dim_mult) - 1)
  x = jnp.zeros((1, 1 + config.scale_factor_temporal, side, side, config.in_channels))
  return x, jnp.zeros((1, 2, 1, 1, config.z_dim))
