"""`T5Config`: hyper-parameters of the umT5 text encoder that conditions Wan, and its presets.

Names follow transformers' `UMT5Config` (`d_model`, `d_kv`, `d_ff`, ...); `convert/umt5.py`
maps a `config.json` onto these fields. The encoder only: no decoder fields.
"""

import dataclasses
from typing import ClassVar

from planx_jax.config_utils import ConfigMixin
from planx_jax.models.layers import dtype_of

FEED_FORWARD_PROJ = "gated-gelu"


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigMixin):
  """umT5 encoder hyper-parameters.

  Every layer has its own relative-position bias table [relative_attention_num_buckets,
  num_heads] (umT5; T5 v1.1 shares layer 0's). `text_len` is the number of rows
  `encode` returns (Wan: 512): shorter sequences are zero-padded to it.
  `dtype` is the compute dtype (Wan runs umT5 in bf16); layer-norm statistics and
  softmax stay fp32. `scan_layers` stacks the layers with `nn.scan` (params under
  `layers` with a leading layer axis); False unrolls them (`layers_0`, ...).
  """

  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  num_heads: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_eps: float = 1e-6
  feed_forward_proj: str = FEED_FORWARD_PROJ
  text_len: int = 512
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True

  PRESETS: ClassVar[tuple[str, ...]] = ("umt5_xxl", "tiny")

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers", "text_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
    if self.feed_forward_proj != FEED_FORWARD_PROJ:
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not supported; umT5 uses "
                       f"{FEED_FORWARD_PROJ!r} (GELU-tanh gate times a linear branch)")
    if self.relative_attention_num_buckets < 4:
      raise ValueError(f"relative_attention_num_buckets must be >= 4 (half per direction, half of those exact), "
                       f"got {self.relative_attention_num_buckets}")
    max_exact = self.relative_attention_num_buckets // 4
    if self.relative_attention_max_distance <= max_exact:
      raise ValueError(f"relative_attention_max_distance must exceed the {max_exact} exact buckets per direction, "
                       f"got {self.relative_attention_max_distance}")
    if not self.layer_norm_eps > 0:
      raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  # --- presets -------------------------------------------------------------
  @classmethod
  def umt5_xxl(cls, **overrides) -> "T5Config":
    """google/umt5-xxl's encoder, the text encoder of Wan2.1 / Wan2.2."""
    return cls.from_dict(overrides, base=cls())

  @classmethod
  def tiny(cls, **overrides) -> "T5Config":
    """Two layers of width 32 (4 heads of 8) over a 512-entry vocabulary: tests and the CPU demo."""
    return cls.from_dict(overrides, base=cls(vocab_size=512, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                                             num_layers=2))
