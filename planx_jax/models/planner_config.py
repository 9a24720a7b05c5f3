"""`PlannerConfig`: the Qwen2 decoder's hyper-parameters and named presets.

Presets follow the Qwen2.5-Instruct config.json files (before the Plan-X
vocabulary extension, which `planx_jax.models.vocab` applies).
"""

import dataclasses
from typing import ClassVar

from planx_jax.config_utils import ConfigMixin
from planx_jax.models.layers import check_remat, dtype_of


@dataclasses.dataclass(frozen=True)
class PlannerConfig(ConfigMixin):
  """Hyper-parameters of the semantic planner (a Qwen2 decoder).

  vocab_size counts embedding rows (Qwen2.5 pads its tokenizer's 151665 entries
  to 151936 / 152064 rows). `dtype` is the compute dtype; logits are fp32.
  `attention_impl` names an implementation of `planx_jax.kernels.attention`.
  `scan_layers` stacks the layers with `nn.scan` (params under `layers` with a
  leading layer axis: fast compiles, the training layout); False unrolls them
  (`layers_0`, ...), which decodes faster where XLA copies each scanned layer's
  weights out of the stack every step (CPU). `models.layer_layout` converts.
  `remat` names the rematerialisation policy of each layer in training (`layers.REMAT_POLICIES`).
  """

  vocab_size: int = 151936
  hidden_size: int = 1536
  intermediate_size: int = 8960
  num_layers: int = 28
  num_heads: int = 12
  num_kv_heads: int = 2
  head_dim: int = 128
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  max_position_embeddings: int = 32768
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  scan_layers: bool = True
  remat: str = "none"

  PRESETS: ClassVar[tuple[str, ...]] = ("qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b", "tiny")

  def __post_init__(self):
    from planx_jax.kernels.attention.dispatch import validate_impl

    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "max_position_embeddings"):
      if getattr(self, name) < 1:
        raise ValueError(f"PlannerConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}) for GQA"
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)
    validate_impl(self.attention_impl)
    check_remat(self.remat)

  # --- presets -------------------------------------------------------------
  @classmethod
  def qwen2_5_0_5b(cls, **overrides) -> "PlannerConfig":
    return cls.from_dict(overrides, base=cls(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, tie_word_embeddings=True))

  @classmethod
  def qwen2_5_1_5b(cls, **overrides) -> "PlannerConfig":
    return cls.from_dict(overrides, base=cls(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, head_dim=128, tie_word_embeddings=True))

  @classmethod
  def qwen2_5_7b(cls, **overrides) -> "PlannerConfig":
    return cls.from_dict(overrides, base=cls(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, tie_word_embeddings=False))

  @classmethod
  def tiny(cls, **overrides) -> "PlannerConfig":
    """A few-layer model for tests and the CPU demo."""
    return cls.from_dict(overrides, base=cls(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, max_position_embeddings=8192, tie_word_embeddings=True))

  @property
  def num_groups(self) -> int:
    return self.num_heads // self.num_kv_heads
