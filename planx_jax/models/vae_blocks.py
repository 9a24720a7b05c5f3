"""Building blocks of the Wan causal video VAE on channels-last video [B, T, H, W, C], with explicit feature caches.

A temporal convolution reads the frames before its input from a cache argument and returns the updated
cache, so a clip can run in chunks with nothing stored in a module. Encoder / decoder wiring: `models/vae.py`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from planx_jax.kernels.attention import attention

HIGHEST = jax.lax.Precision.HIGHEST
CACHE_FRAMES = 2  # a kernel-3 causal convolution needs the two input frames before its chunk


def sub_cache(cache: dict | None, name: str):
  """The cache entry of child `name` (None before the first chunk of a clip when no cache was given)."""
  return None if cache is None else cache[name]


def zeros_history(x: jax.Array, frames: int) -> jax.Array:
  """Zero frames standing for the time before the clip starts: [B, frames, H, W, C]."""
  b, _, h, w, c = x.shape
  return jnp.zeros((b, frames, h, w, c), x.dtype)


def time_tap_conv(x: jax.Array, kernel: jax.Array, stride_t: int = 1) -> jax.Array:
  """3D convolution, valid in time and 'same' in space: [B, T, H, W, C] x [kh, kw, kt, C, O] -> [B, T', H, W, O].

  The kt time taps of each output frame are stacked on the channel axis and meet the kernel in one
  per-frame 2D convolution (the kernel layout makes that a free reshape): XLA:CPU runs 2D
  convolutions about twice as fast as 3D ones. T' = (T - kt) // stride_t + 1.
  """
  b, t, h, w, c = x.shape
  kh, kw, kt = kernel.shape[:3]
  frames = (t - kt) // stride_t + 1
  taps = [x[:, tap:tap + stride_t * (frames - 1) + 1:stride_t] for tap in range(kt)]  # kt x [B, T', H, W, C]
  stacked = jnp.concatenate(taps, axis=-1).reshape(b * frames, h, w, kt * c)  # [B*T', H, W, kt*C], tap-major
  y = jax.lax.conv_general_dilated(stacked, kernel.reshape(kh, kw, kt * c, -1), (1, 1),
                                   [(kh // 2, kh // 2), (kw // 2, kw // 2)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=HIGHEST)  # [B*T', H, W, O]
  return y.reshape(b, frames, h, w, -1)


class CausalConv3d(nn.Module):
  """3D convolution over [B, T, H, W, C], causal in time: output frame t sees input frames t-kt+1 .. t.

  `cache` holds the kt-1 input frames before this chunk (zeros at the start of a clip, which is
  the zero padding a whole-clip causal convolution would use); returns (y, new cache). Spatial
  padding is symmetric, kernel // 2 per side.
  """

  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    kt, kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, kt, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x = x.astype(self.dtype)
    new_cache = None
    if kt > 1:
      history = zeros_history(x, kt - 1) if cache is None else cache.astype(self.dtype)
      x = jnp.concatenate([history, x], axis=1)  # [B, kt-1 + T, H, W, C]
      new_cache = x[:, -(kt - 1):]
    y = time_tap_conv(x, kernel.astype(self.dtype))  # [B, T, H, W, features]
    return y + bias.astype(self.dtype), new_cache


class ChannelRMSNorm(nn.Module):
  """x / ||x||_2 over channels * sqrt(C) * scale (Wan's bias-free RMS norm); statistics in fp32."""

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), 1e-24))  # F.normalize eps
    return (x32 * inv_norm * math.sqrt(channels) * scale.astype(jnp.float32)).astype(self.dtype)


class ResidualBlock(nn.Module):
  """(RMS norm, SiLU, causal 3x3x3 conv) twice plus a shortcut (1x1x1 conv when the width changes)."""

  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None) -> tuple[jax.Array, dict]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    shortcut = x.astype(self.dtype)
    if x.shape[-1] != self.features:
      shortcut, _ = CausalConv3d(self.features, (1, 1, 1), name="conv_shortcut", **kw)(x)
    h = nn.silu(ChannelRMSNorm(name="norm1", **kw)(x))
    h, conv1 = CausalConv3d(self.features, name="conv1", **kw)(h, sub_cache(cache, "conv1"))
    h = nn.silu(ChannelRMSNorm(name="norm2", **kw)(h))
    h, conv2 = CausalConv3d(self.features, name="conv2", **kw)(h, sub_cache(cache, "conv2"))
    return h + shortcut, {"conv1": conv1, "conv2": conv2}


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H x W positions of each frame (no mixing across time), residual."""

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t, h, w, c = x.shape
    y = ChannelRMSNorm(name="norm", **kw)(x).reshape(b * t, h * w, c)  # [B*T, HW, C]
    qkv = nn.Dense(3 * c, name="to_qkv", precision=HIGHEST, **kw)(y)  # [B*T, HW, 3C]
    q, k, v = (part[:, :, None, :] for part in jnp.split(qkv, 3, axis=-1))  # [B*T, HW, 1, C] each
    y = attention(q, k, v, impl=self.attention_impl)[:, :, 0, :]  # [B*T, HW, C]
    y = nn.Dense(c, name="proj", precision=HIGHEST, **kw)(y)
    return x.astype(self.dtype) + y.reshape(b, t, h, w, c)


def interleave_time(y: jax.Array) -> jax.Array:
  """[B, T, H, W, 2C] -> [B, 2T, H, W, C]: channel half 0 is frame 2t, half 1 frame 2t+1."""
  b, t, h, w, c2 = y.shape
  y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)  # [B, T, 2, H, W, C]
  return y.reshape(b, 2 * t, h, w, c2 // 2)


class Resample(nn.Module):
  """Spatial x2 up/down sampling per frame, with an optional causal x2 in time ("...3d" modes).

  Time upsampling: a causal (3,1,1) conv doubles the channels, which become two frames; the clip's
  first frame skips it (one latent frame decodes to one video frame). Time downsampling: a stride-2
  (3,1,1) conv over the previous chunk's last frame and this chunk; the clip's first frame passes
  through alone. `first` says the chunk starts the clip.
  """

  mode: str  # "upsample2d", "upsample3d", "downsample2d" or "downsample3d"
  features: int  # output width of the spatial convolution
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: dict | None, first: bool) -> tuple[jax.Array, dict]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    new_cache = {}
    if self.mode == "upsample3d":
      x, new_cache["time_conv"] = self._time_upsample(
          CausalConv3d(2 * x.shape[-1], (3, 1, 1), name="time_conv", **kw), x, sub_cache(cache, "time_conv"), first)
    b, t, h, w, c = x.shape
    frames = x.reshape(b * t, h, w, c).astype(self.dtype)
    if self.mode.startswith("upsample"):
      frames = jnp.repeat(jnp.repeat(frames, 2, axis=1), 2, axis=2)  # nearest x2: [B*T, 2H, 2W, C]
      frames = nn.Conv(self.features, (3, 3), padding=1, precision=HIGHEST, name="conv", **kw)(frames)
    else:
      frames = jnp.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)))  # bottom / right only
      frames = nn.Conv(self.features, (3, 3), strides=2, padding="VALID", precision=HIGHEST, name="conv",
                       **kw)(frames)
    x = frames.reshape(b, t, *frames.shape[1:])
    if self.mode == "downsample3d":
      x, new_cache["time_conv"] = self._time_downsample(
          TimeDownConv(name="time_conv", **kw), x, sub_cache(cache, "time_conv"), first)
    return x, new_cache

  @staticmethod
  def _time_upsample(time_conv: CausalConv3d, x, cache, first):
    head = x[:, :0]
    if first:
      head, x = x[:, :1], x[:, 1:]
    if x.shape[1] == 0:  # only the clip's first frame: the time conv's history stays empty
      return head, zeros_history(head, CACHE_FRAMES) if cache is None else cache
    y, cache = time_conv(x, cache)  # [B, T, H, W, 2C]
    return jnp.concatenate([head.astype(y.dtype), interleave_time(y)], axis=1), cache

  @staticmethod
  def _time_downsample(time_conv: "TimeDownConv", x, cache, first):
    """First chunk: frame 0 alone, then windows (0,1,2), (2,3,4), ...; later: windows over [last frame, chunk]."""
    new_cache = x[:, -1:]
    if first:
      return (jnp.concatenate([x[:, :1], time_conv(x)], axis=1) if x.shape[1] >= 3 else x[:, :1]), new_cache
    return time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1)), new_cache


class TimeDownConv(nn.Module):
  """(3, 1, 1) convolution with stride 2 in time and no padding: [B, T, H, W, C] -> [B, (T-1)//2, H, W, C]."""

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, 3, c, c), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    return time_tap_conv(x.astype(self.dtype), kernel.astype(self.dtype), stride_t=2) + bias.astype(self.dtype)


def avg_down(x: jax.Array, out_channels: int, factor_t: int, factor_s: int) -> jax.Array:
  """Parameter-free shortcut of Wan2.2's down blocks: space/time-to-depth, then the mean of channel groups.

  [B, T, H, W, C] -> [B, ceil(T / factor_t), H / factor_s, W / factor_s, out_channels]; T is zero-padded at
  the front to a multiple of factor_t (the clip's first frame is a chunk of one).
  """
  b, t, h, w, c = x.shape
  pad = -t % factor_t
  x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
  t, h, w = (t + pad) // factor_t, h // factor_s, w // factor_s
  x = x.reshape(b, t, factor_t, h, factor_s, w, factor_s, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
  return x.reshape(b, t, h, w, out_channels, -1).mean(axis=-1)  # [B, T', H', W', C * f -> out groups]


def dup_up(x: jax.Array, out_channels: int, factor_t: int, factor_s: int, first: bool) -> jax.Array:
  """Parameter-free shortcut of Wan2.2's up blocks: repeat channels, then depth-to-space/time.

  [B, T, H, W, C] -> [B, T * factor_t, H * factor_s, W * factor_s, out_channels]; the first chunk of a clip
  drops its first factor_t - 1 frames (the clip's first latent frame yields one frame).
  """
  b, t, h, w, c = x.shape
  x = jnp.repeat(x, out_channels * factor_t * factor_s**2 // c, axis=-1)
  x = x.reshape(b, t, h, w, out_channels, factor_t, factor_s, factor_s).transpose(0, 1, 5, 2, 6, 3, 7, 4)
  x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_channels)
  return x[:, factor_t - 1:] if first else x
