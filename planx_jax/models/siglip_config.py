"""`SigLIPConfig`: hyper-parameters of the SigLIP vision tower (v1, and the Siglip2 NaFlex variant) with presets.

Field names are planx's; `convert/siglip.py` maps transformers' `SiglipVisionConfig` /
`Siglip2VisionConfig` onto them. No modules or weights here.
"""

import dataclasses
from typing import ClassVar

from planx_jax.config_utils import ConfigMixin
from planx_jax.models.layers import dtype_of


@dataclasses.dataclass(frozen=True)
class SigLIPConfig(ConfigMixin):
  """SigLIP vision tower hyper-parameters.

  `naflex=False` is SigLIP v1 (`SiglipVisionModel`): a conv patch embedding and a
  learned [grid_size^2, hidden] position table for `image_size` inputs. `naflex=True`
  is Siglip2's `Siglip2VisionModel`: a Linear patch embedding over flattened patches
  and a [position_embedding_size^2, hidden] table resized (bilinear, antialiased) to
  each input's patch grid; `image_size` is informational there. `dtype` is the compute
  dtype (LayerNorm and softmax statistics stay fp32).
  """

  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  patch_size: int = 14
  image_size: int = 384
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  use_head: bool = True
  naflex: bool = False
  position_embedding_size: int = 16
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"

  # `tatok_decoder(code_dim)` is a preset too, but needs the checkpoint's code width, so `preset()` omits it.
  PRESETS: ClassVar[tuple[str, ...]] = ("siglip2_so400m_patch14_384", "tiny")

  def __post_init__(self):
    from planx_jax.kernels.attention.dispatch import validate_impl

    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size", "image_size",
                 "num_channels", "position_embedding_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SigLIPConfig.{name} must be a positive int, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if not self.naflex and self.image_size < self.patch_size:
      raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}: no patches")
    if not self.layer_norm_eps > 0:
      raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)
    validate_impl(self.attention_impl)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid_size(self) -> int:
    """Side of the position table's grid: image_size // patch_size (v1), position_embedding_size (NaFlex)."""
    return self.position_embedding_size if self.naflex else self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid_size**2

  @property
  def patch_dim(self) -> int:
    """Values per patch: patch_size^2 * num_channels."""
    return self.patch_size * self.patch_size * self.num_channels

  # --- presets -------------------------------------------------------------
  @classmethod
  def siglip2_so400m_patch14_384(cls, **overrides) -> "SigLIPConfig":
    """google/siglip2-so400m-patch14-384 (SigLIP v1 architecture): 27 layers, 27x27 patches of 14 px."""
    return cls.from_dict(overrides, base=cls())

  @classmethod
  def tiny(cls, **overrides) -> "SigLIPConfig":
    """Width 48 (4 heads of 12), 3 layers, 2 px patches on 54x54 images: a 27x27 grid like so400m's."""
    return cls.from_dict(overrides, base=cls(
        hidden_size=48, intermediate_size=96, num_layers=3, num_heads=4, patch_size=2, image_size=54))

  @classmethod
  def tatok_decoder(cls, code_dim: int, hidden_size: int = 1152, num_layers: int = 3, **overrides) -> "SigLIPConfig":
    """TA-Tok's decoder: Siglip2VisionConfig defaults (12 heads, intermediate 3072, a 16x16 table from
    num_patches=256, head on) with patch_size 1 over `code_dim` input channels, as Tar builds it."""
    return cls.from_dict(overrides, base=cls(
        hidden_size=hidden_size, intermediate_size=3072, num_layers=num_layers, num_heads=12, patch_size=1,
        image_size=16, num_channels=code_dim, naflex=True, position_embedding_size=16))
