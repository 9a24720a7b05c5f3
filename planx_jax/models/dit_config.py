"""`DiTConfig`: hyper-parameters of the Wan video DiT (with the optional Plan-X semantic branch) and presets.

Names follow the paper / Wan where diffusers' differ only in spelling; `convert/wan_dit.py`
maps diffusers' `config.json` onto these fields.
"""

import dataclasses
from typing import ClassVar

from planx_jax.config_utils import ConfigMixin
from planx_jax.models.layers import check_remat, dtype_of


@dataclasses.dataclass(frozen=True)
class DiTConfig(ConfigMixin):
  """Wan DiT hyper-parameters.

  `semantic_in_dim` is the width of the semantic embeddings the Plan-X branch
  consumes (TA-Tok code width in stage 1, the planner width end to end); None means
  no semantic branch (the base Wan model). `semantic_rope` False drops the 3D RoPE of the semantic segment
  (neither its keys nor the video queries that score them are rotated, as for text): Plan-X Table 1's
  "w/o 3D RoPE" ablation. `dtype` is the compute dtype; norms,
  modulation, time embedding and RoPE stay fp32. `scan_layers` stacks the blocks
  with `nn.scan` (params under `blocks` with a leading layer axis); `remat` names each block's
  rematerialisation policy in training (`layers.REMAT_POLICIES`).
  """

  patch_size: tuple[int, int, int] = (1, 2, 2)
  num_heads: int = 24
  head_dim: int = 128
  in_channels: int = 48
  out_channels: int = 48
  text_dim: int = 4096
  freq_dim: int = 256
  ffn_dim: int = 14336
  num_layers: int = 30
  eps: float = 1e-6
  cross_attn_norm: bool = True
  rope_theta: float = 10000.0
  rope_max_seq_len: int = 1024
  semantic_in_dim: int | None = None
  semantic_rope: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  scan_layers: bool = True
  remat: str = "none"

  PRESETS: ClassVar[tuple[str, ...]] = ("wan2_2_ti2v_5b", "tiny")

  def __post_init__(self):
    from planx_jax.kernels.attention.dispatch import validate_impl

    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    if len(self.patch_size) != 3 or min(self.patch_size) < 1:
      raise ValueError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size}")
    for name in ("num_heads", "head_dim", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim",
                 "num_layers", "rope_max_seq_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}")
    if self.freq_dim % 2:
      raise ValueError(f"freq_dim must be even (cos and sin halves), got {self.freq_dim}")
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {self.head_dim}")
    if not isinstance(self.semantic_rope, bool):
      raise ValueError(f"semantic_rope must be a bool, got {self.semantic_rope!r}")
    if self.semantic_in_dim is not None and self.semantic_in_dim < 1:
      raise ValueError(f"semantic_in_dim must be positive or None, got {self.semantic_in_dim}")
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)
    validate_impl(self.attention_impl)
    check_remat(self.remat)

  @property
  def dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def patch_volume(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw

  # --- presets -------------------------------------------------------------
  @classmethod
  def wan2_2_ti2v_5b(cls, **overrides) -> "DiTConfig":
    return cls.from_dict(overrides, base=cls())

  @classmethod
  def tiny(cls, **overrides) -> "DiTConfig":
    """Two blocks of width 48 (4 heads of 12) on 8-channel latents: tests and the CPU demo."""
    return cls.from_dict(overrides, base=cls(
        num_heads=4, head_dim=12, in_channels=8, out_channels=8, text_dim=32, freq_dim=32, ffn_dim=96,
        num_layers=2, rope_max_seq_len=256))

