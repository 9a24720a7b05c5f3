"""The planner's token layout: Qwen2.5 ChatML ids plus Tar's visual tokens.

After the text tokenizer's entries (`text_vocab_size` of them) come, in Tar's
order, `<im_start>`, `<im_end>`, `<S0>`..`<S2>` and `<I0>`..`<I{K-1}>` (DESIGN.md
decision 1). Code k has id `code_offset + k`. This module only maps ids; it does
not tokenize text.
"""

import dataclasses
from typing import Any

import numpy as np

NUM_SCALES = 3
# Codes per image at TA-Tok scale 0 / 1 / 2 (27x27, 13x13, 9x9 pooled grids).
CODES_PER_SCALE = (729, 169, 81)


@dataclasses.dataclass(frozen=True)
class PlanTokens:
  """Ids of the ChatML and plan tokens for one tokenizer.

  Attributes:
    text_vocab_size: tokenizer length before the plan tokens (151665 for Qwen2.5);
      also the id of `<im_start>`.
    codebook_size: number of `<I*>` code tokens (TA-Tok codebook size, 65536).
    chat_im_start: id of ChatML `<|im_start|>`.
    chat_im_end: id of ChatML `<|im_end|>` (the end-of-turn token).
    endoftext: id of `<|endoftext|>`.
  """

  text_vocab_size: int = 151665
  codebook_size: int = 65536
  chat_im_start: int = 151644
  chat_im_end: int = 151645
  endoftext: int = 151643

  def __post_init__(self):
    if self.codebook_size < 1:
      raise ValueError(f"codebook_size must be >= 1, got {self.codebook_size}")
    for name in ("chat_im_start", "chat_im_end", "endoftext"):
      value = getattr(self, name)
      if not 0 <= value < self.text_vocab_size:
        raise ValueError(f"{name}={value} is not a text token id (0..{self.text_vocab_size - 1})")

  @property
  def im_start(self) -> int:
    return self.text_vocab_size

  @property
  def im_end(self) -> int:
    return self.text_vocab_size + 1

  def scale_token(self, scale: int) -> int:
    """Id of `<S{scale}>`."""
    if not 0 <= scale < NUM_SCALES:
      raise ValueError(f"TA-Tok scale must be 0, 1 or 2, got {scale}")
    return self.text_vocab_size + 2 + scale

  @property
  def code_offset(self) -> int:
    """Id of `<I0>`."""
    return self.text_vocab_size + 2 + NUM_SCALES

  @property
  def vocab_size(self) -> int:
    """Rows of the extended embedding: text tokens + 5 markers + codes."""
    return self.code_offset + self.codebook_size

  def code_to_id(self, codes: Any) -> Any:
    """Code index k (int or integer array) -> token id `code_offset + k`."""
    arr = np.asarray(codes)
    if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
      bad = arr[(arr < 0) | (arr >= self.codebook_size)].ravel()[0]
      raise ValueError(f"code {int(bad)} outside the codebook (0..{self.codebook_size - 1})")
    return codes + self.code_offset

  def id_to_code(self, ids: Any) -> Any:
    """Token id (int or integer array) of a `<I*>` token -> code index."""
    arr = np.asarray(ids)
    if arr.size and not self.is_code(arr).all():
      bad = arr[~self.is_code(arr)].ravel()[0]
      raise ValueError(
          f"token id {int(bad)} is not a code token (<I*> ids are {self.code_offset}..{self.vocab_size - 1})"
      )
    return ids - self.code_offset

  def is_code(self, ids: Any) -> Any:
    return (ids >= self.code_offset) & (ids < self.vocab_size)

  def token_strings(self) -> list[str]:
    """The added token strings in id order: `<im_start>`, `<im_end>`, `<S0..2>`, `<I0..>`."""
    return ["<im_start>", "<im_end>"] + [f"<S{s}>" for s in range(NUM_SCALES)] + [
        f"<I{k}>" for k in range(self.codebook_size)
    ]

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "PlanTokens":
    from planx_jax.config_utils import config_from_dict

    return config_from_dict(cls, values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
