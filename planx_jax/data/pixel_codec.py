"""A pixel codec for tiny worlds: space-to-depth in space and time with Wan's causal frame layout, optionally
projected on the principal components of the data (a linear autoencoder fit in closed form).

Stands in for the Wan VAE where a VAE cannot be trained in the budget (the CPU demo): the latent grid has the
VAE's layout (1 + (T-1)/4 frames, first frame alone), so the DiT, the semantic positions and the samplers run
unchanged. Without a basis it is lossless (decode(encode(x)) == x); with one, it keeps the `channels` leading
principal components of each space-time block, whitened, as a VAE's latents are normalised per channel. With
`delta`, latent frames after the first hold their change from the first (causal, like the VAE's latents): a
static scene is zero there.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class PixelCodec:
  """Pixels [B, T, H, W, 3] in [-1, 1] <-> latents [B, 1 + (T-1)/temporal, H/spatial, W/spatial, C].

  Latent frame 0 holds video frame 0 repeated `temporal` times (Wan's causal first frame); latent frame i >= 1
  holds frames 1 + (i-1) * temporal .. i * temporal. A block has D = 3 * temporal * spatial**2 values ordered
  (time, row, column, rgb). Without `basis`, C = D and latents are (block - mean) / std with scalars; with it,
  latents are ((block - center) @ basis) / scale: C principal components [D, C] (orthonormal columns), each
  divided by its standard deviation. `fit` sets either from data. `delta`: latent frame i >= 1 stores
  z_i - z_0 (decode adds z_0 back).
  """

  spatial: int = 4
  temporal: int = 4
  mean: float = 0.0
  std: float = 1.0
  basis: np.ndarray | None = None  # [D, C]
  center: np.ndarray | None = None  # [D]
  scale: np.ndarray | None = None  # [C]
  delta: bool = False

  def __post_init__(self):
    for name in ("spatial", "temporal"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"PixelCodec.{name} must be a positive int, got {value!r}")
    if not np.isfinite(self.std) or self.std <= 0 or not np.isfinite(self.mean):
      raise ValueError(f"PixelCodec needs a finite mean and a positive std, got mean={self.mean}, std={self.std}")
    if not isinstance(self.delta, bool):
      raise ValueError(f"PixelCodec.delta must be a bool, got {self.delta!r}")
    if (self.basis is None) != (self.center is None) or (self.basis is None) != (self.scale is None):
      raise ValueError("PixelCodec.basis, center and scale go together (all or none)")
    if self.basis is not None:
      d = self.block_size
      if self.basis.shape[0] != d or self.basis.ndim != 2 or self.center.shape != (d,) or self.scale.shape != (
          self.basis.shape[1],) or not np.all(self.scale > 0):
        raise ValueError(f"PixelCodec basis must be [{d}, C] with center [{d}] and positive scale [C], got "
                         f"{self.basis.shape}, {self.center.shape}, {self.scale.shape}")

  def replace(self, **changes) -> "PixelCodec":
    return dataclasses.replace(self, **changes)

  @property
  def block_size(self) -> int:
    """D: values per space-time block."""
    return 3 * self.temporal * self.spatial**2

  @property
  def latent_channels(self) -> int:
    return self.block_size if self.basis is None else int(self.basis.shape[1])

  @property
  def stride(self) -> tuple[int, int, int]:
    return (self.temporal, self.spatial, self.spatial)

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(F, H, W, C) of a T x H x W video; T must be 1 + temporal * k and the sides multiples of spatial."""
    t, s = self.temporal, self.spatial
    if num_frames < 1 or (num_frames - 1) % t or height % s or width % s or height < 1 or width < 1:
      raise ValueError(f"video {num_frames}x{height}x{width} does not fit the codec stride (frames 1 + {t}k, "
                       f"sides multiples of {s})")
    return (1 + (num_frames - 1) // t, height // s, width // s, self.latent_channels)


def encode(codec: PixelCodec, video) -> jnp.ndarray:
  """Video [B, T, H, W, 3] in [-1, 1] -> normalised latents [B, F, H/s, W/s, C] fp32."""
  video = jnp.asarray(video, jnp.float32)
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f"video must be [B, T, H, W, 3], got {tuple(video.shape)}")
  b, t, h, w, _ = video.shape
  f, hl, wl, c = codec.latent_shape(t, h, w)
  st, s = codec.temporal, codec.spatial
  first = jnp.repeat(video[:, :1], st, axis=1)  # [B, st, H, W, 3]
  frames = jnp.concatenate([first, video[:, 1:]], axis=1)  # [B, F * st, H, W, 3]
  x = frames.reshape(b, f, st, hl, s, wl, s, 3)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, f, hl, wl, codec.block_size)  # [B, F, H/s, W/s, D]
  if codec.basis is None:
    z = (x - codec.mean) / codec.std
  else:
    z = ((x - codec.center) @ codec.basis) / codec.scale  # [B, F, H/s, W/s, C]
  if codec.delta:
    z = jnp.concatenate([z[:, :1], z[:, 1:] - z[:, :1]], axis=1)
  return z


def decode(codec: PixelCodec, latents) -> jnp.ndarray:
  """Normalised latents [B, F, H, W, C] -> video [B, 1 + (F-1) * temporal, H * s, W * s, 3] clipped to [-1, 1];
  frame 0 is the mean of latent frame 0's `temporal` copies."""
  latents = jnp.asarray(latents, jnp.float32)
  if latents.ndim != 5 or latents.shape[-1] != codec.latent_channels:
    raise ValueError(f"latents must be [B, F, H, W, {codec.latent_channels}], got {tuple(latents.shape)}")
  b, f, hl, wl, _ = latents.shape
  st, s = codec.temporal, codec.spatial
  if codec.delta:
    latents = jnp.concatenate([latents[:, :1], latents[:, 1:] + latents[:, :1]], axis=1)
  if codec.basis is None:
    x = latents * codec.std + codec.mean
  else:
    x = (latents * codec.scale) @ codec.basis.T + codec.center  # [B, F, H, W, D]
  x = x.reshape(b, f, hl, wl, st, s, s, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, F, st, H/s, s, W/s, s, 3]
  x = x.reshape(b, f * st, hl * s, wl * s, 3)
  video = jnp.concatenate([jnp.mean(x[:, :st], axis=1, keepdims=True), x[:, st:]], axis=1)
  return jnp.clip(video, -1.0, 1.0)


def fit(codec: PixelCodec, videos, channels: int | None = None) -> PixelCodec:
  """The codec fit to `videos` [B, T, H, W, 3] in [-1, 1]: scalar mean / std of the blocks (channels None), or
  their `channels` leading principal components with per-component std (PCA by SVD of the centred blocks)."""
  plain = codec.replace(mean=0.0, std=1.0, basis=None, center=None, scale=None, delta=False)
  raw = np.asarray(encode(plain, videos), np.float64)  # [B, F, H, W, D]
  if channels is None:
    return plain.replace(mean=float(raw.mean()), std=float(max(raw.std(), 1e-6)), delta=codec.delta)
  d = codec.block_size
  if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or not 1 <= channels <= d:
    raise ValueError(f"channels must be an int in [1, {d}] (the block size), got {channels!r}")
  blocks = raw.reshape(-1, d)
  center = blocks.mean(axis=0)
  _, singular, vt = np.linalg.svd(blocks - center, full_matrices=False)
  basis = vt[:channels].T  # [D, C]
  scale = np.maximum(singular[:channels] / np.sqrt(len(blocks)), 1e-6)  # std of each component
  return plain.replace(basis=basis.astype(np.float32), center=center.astype(np.float32),
                       scale=scale.astype(np.float32), delta=codec.delta)
