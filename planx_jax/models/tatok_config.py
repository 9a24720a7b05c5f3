"""`TATokConfig`: the text-aligned tokenizer's hyper-parameters (encoder tower, bottleneck, codebook, decoder).

Mirrors the args Tar stores in `ta_tok.pth` (Plan-X Section 3.1; specs/tatok_siglip.md);
`convert/tatok_tar.py` maps them. Scales follow Tar: scale s pools the patch grid
with a (s+1) x (s+1) window (729 / 169 / 81 codes for the so400m tower).
"""

import dataclasses
from typing import Any, ClassVar, Mapping

from planx_jax.config_utils import ConfigMixin, config_from_dict
from planx_jax.kernels.codebook import validate_impl
from planx_jax.models.siglip_config import SigLIPConfig

NUM_SCALES = 3
RESIZE_METHODS = ("bilinear", "bilinear_antialias", "bicubic_antialias")
SO400M_TEACHER = "google/siglip2-so400m-patch14-384"


@dataclasses.dataclass(frozen=True)
class TATokConfig(ConfigMixin):
  """TA-Tok hyper-parameters.

  Attributes:
    encoder: the SigLIP vision tower (Tar's `teacher` architecture).
    decoder: the Siglip2 NaFlex decoder (codes -> SigLIP-like features), or None
      when only encoding / codebook lookup is needed.
    code_dim: D, the width of the codebook vectors (read from the checkpoint).
    codebook_size: K, number of codes.
    l2_normalized: cosine-similarity codebook (Tar's released setting); False is
      Euclidean nearest neighbour on raw vectors.
    temperature: softmax temperature of the optional stochastic lookup (Tar: 0.03).
    input_size: images are resized to input_size x input_size before the tower.
    select_layer: which `hidden_states` entry feeds the bottleneck (Tar: -2).
    resize: "bilinear" (Tar's plain tensor resize), "bilinear_antialias" or
      "bicubic_antialias" (closer to the HF image processor).
    codebook_tile: most rows of the codebook scored at a time by the lookup.
    codebook_impl: the `planx_jax.kernels.codebook` implementation of the argmax lookup ("auto": the Pallas
      kernel on TPU, else the streaming XLA form); a run-time choice, every one gives the same codes.
    teacher: name of the encoder architecture, kept for Tar's args on export.
    bottleneck_token_num: Tar's arg (codes at scale 0), kept for export.
  """

  encoder: SigLIPConfig = dataclasses.field(default_factory=SigLIPConfig.siglip2_so400m_patch14_384)
  decoder: SigLIPConfig | None = None
  code_dim: int = 1536
  codebook_size: int = 65536
  l2_normalized: bool = True
  temperature: float = 0.03
  input_size: int = 384
  select_layer: int = -2
  resize: str = "bilinear"
  codebook_tile: int = 4096
  codebook_impl: str = "auto"
  teacher: str = SO400M_TEACHER
  bottleneck_token_num: int = 729

  PRESETS: ClassVar[tuple[str, ...]] = ("ta_tok", "tiny")

  def __post_init__(self):
    for name in ("code_dim", "codebook_size", "input_size", "codebook_tile"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"TATokConfig.{name} must be positive, got {getattr(self, name)}")
    if self.temperature <= 0:
      raise ValueError(f"TATokConfig.temperature must be > 0, got {self.temperature}")
    if self.resize not in RESIZE_METHODS:
      raise ValueError(f"TATokConfig.resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
    validate_impl(self.codebook_impl)
    if self.encoder.naflex:
      raise ValueError("TA-Tok's encoder is a SigLIP v1 tower (naflex=False)")
    if self.input_size != self.encoder.image_size:
      raise ValueError(f"input_size {self.input_size} differs from the encoder's image_size "
                       f"{self.encoder.image_size}; Tar resizes inputs to the tower's own size")
    depth = self.encoder.num_layers
    if not -(depth + 1) <= self.select_layer <= depth:
      raise ValueError(f"select_layer {self.select_layer} does not index the {depth + 1} hidden states")
    if self.select_layer == 0 or self.select_layer == -(depth + 1):
      raise ValueError("select_layer picks the patch embeddings; TA-Tok reads an encoder layer's output")
    if self.decoder is not None:
      if not self.decoder.naflex or self.decoder.patch_size != 1:
        raise ValueError("the TA-Tok decoder is a NaFlex tower with patch_size 1 (one token per code)")
      if self.decoder.num_channels != self.code_dim:
        raise ValueError(f"decoder.num_channels {self.decoder.num_channels} must equal code_dim {self.code_dim}")
      if self.decoder.hidden_size != self.encoder.hidden_size:
        raise ValueError(f"decoder hidden size {self.decoder.hidden_size} differs from the encoder's "
                         f"{self.encoder.hidden_size}")

  # --- derived ---------------------------------------------------------------
  @property
  def hidden_size(self) -> int:
    return self.encoder.hidden_size

  @property
  def encoder_layers_run(self) -> int:
    """Encoder layers needed to produce `hidden_states[select_layer]`."""
    return self.select_layer % (self.encoder.num_layers + 1)

  @property
  def grid_size(self) -> int:
    return self.encoder.grid_size

  def pool_size(self, scale: int) -> int:
    check_scale(scale)
    return scale + 1

  def scale_grid(self, scale: int) -> int:
    """Side of the pooled code grid at `scale` (27 / 13 / 9 for so400m)."""
    return self.grid_size // self.pool_size(scale)

  def codes_per_image(self, scale: int) -> int:
    return self.scale_grid(scale) ** 2

  # --- dict I/O with nested tower configs -------------------------------------
  @classmethod
  def from_dict(cls, values: Mapping[str, Any], base=None):
    values = dict(values)
    for name in ("encoder", "decoder"):
      if isinstance(values.get(name), Mapping):
        values[name] = SigLIPConfig.from_dict(values[name])
    return config_from_dict(cls, values, base)

  def to_dict(self) -> dict[str, Any]:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["encoder"] = self.encoder.to_dict()
    out["decoder"] = None if self.decoder is None else self.decoder.to_dict()
    return out

  # --- presets ---------------------------------------------------------------
  @classmethod
  def ta_tok(cls, code_dim: int = 1536, **overrides) -> "TATokConfig":
    """The released TA-Tok: so400m encoder, 65536 codes of width `code_dim`, 3-layer decoder."""
    return cls.from_dict(overrides, base=cls(code_dim=code_dim, decoder=SigLIPConfig.tatok_decoder(code_dim)))

  @classmethod
  def tiny(cls, code_dim: int = 40, **overrides) -> "TATokConfig":
    """A tiny SigLIP tower on 54x54 images (27x27 patches, so the 729/169/81 code counts hold), 1024 codes."""
    encoder = SigLIPConfig.tiny()
    decoder = SigLIPConfig.tatok_decoder(code_dim, hidden_size=encoder.hidden_size, num_layers=2)
    return cls.from_dict(overrides, base=cls(
        encoder=encoder, decoder=decoder, code_dim=code_dim, codebook_size=1024, input_size=encoder.image_size,
        codebook_tile=256, teacher="tiny"))


def check_scale(scale: int) -> None:
  if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale < NUM_SCALES:
    raise ValueError(f"TA-Tok scale must be 0, 1 or 2 (729 / 169 / 81 codes for so400m), got {scale!r}")
