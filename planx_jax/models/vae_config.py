"""`VAEConfig`: hyper-parameters of the Wan causal video VAE (Wan2.1 and Wan2.2 flavours) and presets.

Field names follow diffusers' `AutoencoderKLWan` except `temporal_downsample` (diffusers spells it
`temperal_downsample`; `convert/wan_vae.py` maps the JSON). Not the model: see `models/vae.py`.
"""

import dataclasses
from typing import ClassVar

from planx_jax.config_utils import ConfigMixin
from planx_jax.models.layers import dtype_of

# Per-channel statistics of the Wan2.1 (16-channel) and Wan2.2 TI2V-5B (48-channel) latent spaces, as
# published with the checkpoints; `encode` returns (mu - mean) / std and `decode` undoes it.
WAN2_1_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN2_1_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
WAN2_2_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN2_2_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


def _spread(n: int, low: float, high: float) -> tuple[float, ...]:
  """n values evenly spaced in [low, high]: non-trivial latent statistics for the tiny presets."""
  return tuple(round(low + (high - low) * i / max(n - 1, 1), 4) for i in range(n))


@dataclasses.dataclass(frozen=True)
class VAEConfig(ConfigMixin):
  """Wan VAE hyper-parameters.

  `in_channels` / `out_channels` count the channels the encoder's first and the decoder's last
  convolution see, i.e. after the `patch_size` x `patch_size` pixel patchify (12 = 3 x 2 x 2 for
  Wan2.2); `patch_size` 1 means no patchify (Wan2.1). `is_residual` selects Wan2.2's down/up blocks
  with parameter-free average-down / duplicate-up shortcuts. `decoder_base_dim` None means
  `base_dim`. `attn_scales` must be empty (kept for diffusers' config.json). `dtype` is the compute
  dtype (RMS norms and softmax statistics stay fp32).
  """

  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  is_residual: bool = False
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int = 1
  latents_mean: tuple[float, ...] = WAN2_1_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN2_1_LATENTS_STD
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"

  PRESETS: ClassVar[tuple[str, ...]] = ("wan2_2", "wan2_1", "tiny", "tiny_2_1")

  def __post_init__(self):
    from planx_jax.kernels.attention.dispatch import validate_impl

    for name, kind in (("dim_mult", int), ("attn_scales", float), ("temporal_downsample", bool),
                       ("latents_mean", float), ("latents_std", float)):
      object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
    for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels", "patch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"VAEConfig.{name} must be positive, got {getattr(self, name)}")
    if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
      raise ValueError(f"VAEConfig.decoder_base_dim must be positive or None, got {self.decoder_base_dim}")
    if not self.dim_mult or min(self.dim_mult) < 1:
      raise ValueError(f"dim_mult must be a non-empty tuple of positive ints, got {self.dim_mult}")
    if self.attn_scales:
      raise ValueError(f"attn_scales={self.attn_scales}: encoder attention blocks are not supported (diffusers' "
                       "AutoencoderKLWan cannot run them and no released Wan VAE uses them); use ()")
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"temporal_downsample has {len(self.temporal_downsample)} entries; dim_mult "
                       f"{self.dim_mult} has {len(self.dim_mult) - 1} downsampling stages")
    for name in ("latents_mean", "latents_std"):
      if len(getattr(self, name)) != self.z_dim:
        raise ValueError(f"{name} has {len(getattr(self, name))} values, expected z_dim={self.z_dim}")
    if min(self.latents_std) <= 0:
      raise ValueError(f"latents_std must be positive, got {min(self.latents_std)}")
    pixels = self.patch_size**2
    if self.in_channels % pixels or self.out_channels % pixels:
      raise ValueError(f"in_channels {self.in_channels} and out_channels {self.out_channels} must be multiples of "
                       f"patch_size**2 = {pixels} (channels after the pixel patchify)")
    if self.in_channels // pixels != self.out_channels // pixels:
      raise ValueError(f"the encoder reads {self.in_channels // pixels}-channel video but the decoder writes "
                       f"{self.out_channels // pixels}-channel video")
    if self.is_residual:
      self._check_residual_shortcuts()
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)
    validate_impl(self.attention_impl)

  def _check_residual_shortcuts(self) -> None:
    """The average-down / duplicate-up shortcuts regroup channels; widths must divide evenly."""
    last = len(self.dim_mult) - 1
    for i, (c_in, c_out) in enumerate(zip(self.encoder_dims[:-1], self.encoder_dims[1:])):
      factor = (2 if i < last and self.temporal_downsample[i] else 1) * (4 if i < last else 1)
      if c_in * factor % c_out:
        raise ValueError(f"encoder stage {i}: {c_in} channels x {factor} do not split into {c_out} groups")
    upsample = self.temporal_downsample[::-1]
    for i, (c_in, c_out) in enumerate(zip(self.decoder_dims[:-1], self.decoder_dims[1:])):
      factor = (2 if upsample[i] else 1) * 4 if i < last else 0
      if factor and c_out * factor % c_in:
        raise ValueError(f"decoder stage {i}: {c_out} channels x {factor} are not a multiple of {c_in}")

  @property
  def decoder_dim(self) -> int:
    return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

  @property
  def encoder_dims(self) -> tuple[int, ...]:
    """Widths entering / leaving each encoder stage (the stem's, then one per `dim_mult` entry)."""
    return tuple(self.base_dim * m for m in (1, *self.dim_mult))

  @property
  def decoder_dims(self) -> tuple[int, ...]:
    """Widths entering / leaving each decoder stage (the deepest first)."""
    return tuple(self.decoder_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1]))

  @property
  def video_channels(self) -> int:
    """Channels of the pixel video (3 for RGB)."""
    return self.in_channels // self.patch_size**2

  @property
  def scale_factor_temporal(self) -> int:
    return 2**sum(self.temporal_downsample)

  @property
  def scale_factor_spatial(self) -> int:
    return 2**(len(self.dim_mult) - 1) * self.patch_size

  # --- presets -------------------------------------------------------------
  @classmethod
  def wan2_2(cls, **overrides) -> "VAEConfig":
    """Wan2.2 TI2V-5B: 48 latent channels, stride 4 x 16 x 16 (2 x 2 pixel patchify), residual blocks."""
    return cls.from_dict(overrides, base=cls(
        base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, latents_mean=WAN2_2_LATENTS_MEAN, latents_std=WAN2_2_LATENTS_STD))

  @classmethod
  def wan2_1(cls, **overrides) -> "VAEConfig":
    """Wan2.1: 16 latent channels, stride 4 x 8 x 8."""
    return cls.from_dict(overrides, base=cls())

  @classmethod
  def tiny(cls, **overrides) -> "VAEConfig":
    """The Wan2.2 architecture at width 8 (decoder 12), 4 latent channels: tests and the CPU demo."""
    return cls.from_dict(overrides, base=cls(
        base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, latents_mean=_spread(4, -0.3, 0.4),
        latents_std=_spread(4, 0.5, 1.5)))

  @classmethod
  def tiny_2_1(cls, **overrides) -> "VAEConfig":
    """The Wan2.1 architecture at width 8, 4 latent channels."""
    return cls.from_dict(overrides, base=cls(
        base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=_spread(4, -0.3, 0.4),
        latents_std=_spread(4, 0.5, 1.5)))
