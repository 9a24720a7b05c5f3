"""The planner's training conversation (Plan-X Figure 6, DESIGN.md decision 2) as token ids and masks.

Builds, batches and parses ChatML conversations whose images are TA-Tok code tokens; it does not sample,
compute losses or encode images (codes come in as integer arrays).
"""

import dataclasses

import numpy as np

from planx_jax.data.tokenizer import check_tokenizer_layout
from planx_jax.plan_tokens import CODES_PER_SCALE, NUM_SCALES, PlanTokens

SYSTEM_PROMPT = "You are a helpful assistant."
FIRST_FRAME_SCALE = 0
PLAN_FRAME_SCALE = 2
FIRST_FRAME_CODES = CODES_PER_SCALE[FIRST_FRAME_SCALE]  # 729 = 27x27
PLAN_FRAME_CODES = CODES_PER_SCALE[PLAN_FRAME_SCALE]  # 81 = 9x9
# Tokens per planned keyframe: <im_start> <S2> 81 codes <im_end>.
PLAN_FRAME_TOKENS = PLAN_FRAME_CODES + 3


def _check_num_frames(num_frames) -> int:
  if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
    raise ValueError(
        f"num_frames F must be at least 2 (the first frame plus at least one planned keyframe), got F={num_frames!r}"
    )
  return int(num_frames)


def _check_text(name: str, value) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{name} must be a non-empty string, got {value!r}")
  return value


def user_instruction(image_description: str, video_prompt: str, num_frames: int) -> str:
  """The user turn's text (Figure 6) for F keyframes; the first frame's image tokens follow it."""
  _check_text("image_description", image_description)
  _check_text("video_prompt", video_prompt)
  num_frames = _check_num_frames(num_frames)
  return (
      f"Given the initial frame description: {image_description}, generate the subsequent {num_frames - 1} frames "
      f"of the initial frame based on the instruction: {video_prompt}.\n"
  )


@dataclasses.dataclass(frozen=True, eq=False)
class PlanConversation:
  """One planner conversation as ids, with the masks training needs.

  Attributes:
    token_ids: [L] int32 ids.
    loss_mask: [L] bool, True exactly on the assistant's (F-1)*81 code tokens, i.e.
      the positions whose token is a target. A next-token loss shifts it: logits at
      position i-1 are scored against token i where loss_mask[i].
    first_frame_mask: [L] bool, True exactly on the user turn's 729 first-frame code
      positions: the embeddings zeroed with probability 0.5 (T2V/I2V hybrid), and
      always when `has_first_frame` is False.
    prompt_length: number of tokens up to and including `<|im_start|>assistant\\n`;
      `token_ids[:prompt_length]` is the generation prompt.
    has_first_frame: False for T2V, where the 729 slots hold code 0 placeholders
      that the model must zero through `first_frame_mask`.
  """

  token_ids: np.ndarray
  loss_mask: np.ndarray
  first_frame_mask: np.ndarray
  prompt_length: int
  has_first_frame: bool

  def __len__(self) -> int:
    return int(self.token_ids.shape[0])


def _code_ids(name: str, codes, shape: tuple[int, ...], plan_tokens: PlanTokens) -> np.ndarray:
  arr = np.asarray(codes)
  if arr.shape != shape:
    raise ValueError(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must hold integer codes, got dtype {arr.dtype}")
  try:
    return np.asarray(plan_tokens.code_to_id(arr.astype(np.int64)), np.int32)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None


def _text_ids(tokenizer, text: str, plan_tokens: PlanTokens) -> list[int]:
  ids = tokenizer.encode(text, add_special_tokens=False)
  chat = {plan_tokens.chat_im_start, plan_tokens.chat_im_end, plan_tokens.endoftext}
  for index in ids:
    if index in chat or index >= plan_tokens.text_vocab_size:
      raise ValueError(f"text {text!r} contains the special token id {index}; prompts must be plain text")
  return ids


def build_plan_conversation(
    tokenizer,
    plan_tokens: PlanTokens,
    image_description: str,
    video_prompt: str,
    num_frames: int,
    first_frame_codes=None,
    plan_codes=None,
) -> PlanConversation:
  """The Figure 6 conversation in ChatML, with the codes spliced in as ids.

  `<|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n<|im_start|>user\\n{instruction}`
  `<im_start><S0>` 729 codes `<im_end><|im_end|>\\n<|im_start|>assistant\\n`, then, with
  `plan_codes`, (F-1) x (`<im_start><S2>` 81 codes `<im_end>`) `<|im_end|>\\n`. Without
  `plan_codes` the result is the generation prompt.

  Args:
    tokenizer: a tokenizer whose ChatML (and plan token, if present) ids match `plan_tokens`.
    plan_tokens: the id layout.
    image_description, video_prompt: non-empty texts of the instruction.
    num_frames: F >= 2 keyframes, counting the first frame.
    first_frame_codes: [729] TA-Tok scale-0 codes of the first frame; None for
      T2V, which fills the slots with code 0 (see `PlanConversation.has_first_frame`).
    plan_codes: [F-1, 81] TA-Tok scale-2 codes of the planned keyframes, or None.
  """
  instruction = user_instruction(image_description, video_prompt, num_frames)
  num_frames = int(num_frames)
  check_tokenizer_layout(tokenizer, plan_tokens)
  has_first_frame = first_frame_codes is not None
  if has_first_frame:
    first_ids = _code_ids("first_frame_codes", first_frame_codes, (FIRST_FRAME_CODES,), plan_tokens)
  else:
    first_ids = np.full((FIRST_FRAME_CODES,), plan_tokens.code_offset, np.int32)
  plan_ids = None
  if plan_codes is not None:
    plan_ids = _code_ids("plan_codes", plan_codes, (num_frames - 1, PLAN_FRAME_CODES), plan_tokens)

  chat_start, chat_end = plan_tokens.chat_im_start, plan_tokens.chat_im_end
  newline = _text_ids(tokenizer, "\n", plan_tokens)
  # Segments of (ids, kind): kind 0 = plain, 1 = first-frame codes, 2 = target codes.
  segments = [
      ([chat_start], 0),
      (_text_ids(tokenizer, f"system\n{SYSTEM_PROMPT}", plan_tokens), 0),
      ([chat_end], 0),
      (newline, 0),
      ([chat_start], 0),
      (_text_ids(tokenizer, f"user\n{instruction}", plan_tokens), 0),
      ([plan_tokens.im_start, plan_tokens.scale_token(FIRST_FRAME_SCALE)], 0),
      (first_ids, 1),
      ([plan_tokens.im_end, chat_end], 0),
      (newline, 0),
      ([chat_start], 0),
      (_text_ids(tokenizer, "assistant\n", plan_tokens), 0),
  ]
  prompt_length = sum(len(ids) for ids, _ in segments)
  if plan_ids is not None:
    frame_open = [plan_tokens.im_start, plan_tokens.scale_token(PLAN_FRAME_SCALE)]
    for frame in plan_ids:
      segments += [(frame_open, 0), (frame, 2), ([plan_tokens.im_end], 0)]
    segments += [([chat_end], 0), (newline, 0)]

  token_ids = np.concatenate([np.asarray(ids, np.int32) for ids, _ in segments])
  kinds = np.concatenate([np.full((len(ids),), kind, np.int8) for ids, kind in segments])
  arrays = (token_ids, kinds == 2, kinds == 1)
  for arr in arrays:
    arr.setflags(write=False)
  return PlanConversation(*arrays, prompt_length=prompt_length, has_first_frame=has_first_frame)


def batch_conversations(
    convs: list[PlanConversation], pad_id: int, max_length: int | None = None, left_pad: bool = False
) -> dict[str, np.ndarray]:
  """Stacks conversations into padded [B, T] arrays.

  T is `max_length`, or the longest conversation. Right padding suits training
  batches; `left_pad=True` suits batches of generation prompts, which then end
  together. Returns token_ids [B, T] int32 (pad_id at padding), loss_mask and
  first_frame_mask [B, T] bool (False at padding), segment_ids [B, T] int32 (1 real,
  0 padding), positions [B, T] int32 (0.. over the real tokens, 0 at padding),
  lengths and prompt_lengths [B] int32, has_first_frame [B] bool.
  """
  if not convs:
    raise ValueError("batch_conversations needs at least one conversation")
  if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or pad_id < 0:
    raise ValueError(f"pad_id must be a non-negative int, got {pad_id!r}")
  lengths = np.array([len(c) for c in convs], np.int32)
  if max_length is None:
    max_length = int(lengths.max())
  elif isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
    raise ValueError(f"max_length must be a positive int, got {max_length!r}")
  for i, length in enumerate(lengths):
    if length > max_length:
      raise ValueError(f"conversation {i} has {length} tokens, more than max_length={max_length}")

  b, t = len(convs), int(max_length)
  token_ids = np.full((b, t), pad_id, np.int32)
  loss_mask = np.zeros((b, t), bool)
  first_frame_mask = np.zeros((b, t), bool)
  segment_ids = np.zeros((b, t), np.int32)
  positions = np.zeros((b, t), np.int32)
  for i, (conv, length) in enumerate(zip(convs, lengths)):
    span = slice(t - length, t) if left_pad else slice(0, length)
    token_ids[i, span] = conv.token_ids
    loss_mask[i, span] = conv.loss_mask
    first_frame_mask[i, span] = conv.first_frame_mask
    segment_ids[i, span] = 1
    positions[i, span] = np.arange(length, dtype=np.int32)
  return {
      "token_ids": token_ids,
      "loss_mask": loss_mask,
      "first_frame_mask": first_frame_mask,
      "segment_ids": segment_ids,
      "positions": positions,
      "lengths": lengths,
      "prompt_lengths": np.array([c.prompt_length for c in convs], np.int32),
      "has_first_frame": np.array([c.has_first_frame for c in convs], bool),
  }


def _describe(index: int, plan_tokens: PlanTokens) -> str:
  names = {
      plan_tokens.im_start: "<im_start>",
      plan_tokens.im_end: "<im_end>",
      plan_tokens.chat_im_start: "<|im_start|>",
      plan_tokens.chat_im_end: "<|im_end|>",
      plan_tokens.endoftext: "<|endoftext|>",
  }
  names.update({plan_tokens.scale_token(s): f"<S{s}>" for s in range(NUM_SCALES)})
  if index in names:
    return f"{names[index]} (id {index})"
  if plan_tokens.is_code(index):
    return f"<I{index - plan_tokens.code_offset}> (id {index})"
  if 0 <= index < plan_tokens.text_vocab_size:
    return f"text token id {index}"
  return f"id {index} (outside the vocabulary of {plan_tokens.vocab_size})"


def plan_codes_from_tokens(token_ids, plan_tokens: PlanTokens, num_frames: int) -> np.ndarray:
  """Parses an assistant response into the planned codes [F-1, 81] int32.

  `token_ids` [N] starts at the assistant's content (for a `PlanConversation`,
  `token_ids[prompt_length:]`) and holds (F-1) x (`<im_start><S2>` 81 codes
  `<im_end>`), then nothing or an end-of-turn (`<|im_end|>` / `<|endoftext|>`) after
  which the rest is ignored. Errors name the first offending position (relative to
  the response start) and the token found vs expected.
  """
  num_frames = _check_num_frames(num_frames)
  ids = np.asarray(token_ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"token_ids must be a 1-D integer array, got shape {list(ids.shape)} dtype {ids.dtype}")
  ids = ids.astype(np.int64)
  frames = num_frames - 1
  needed = frames * PLAN_FRAME_TOKENS
  if ids.shape[0] < needed:
    raise ValueError(
        f"response has {ids.shape[0]} tokens; {frames} planned keyframes need {needed} "
        f"({PLAN_FRAME_TOKENS} per keyframe)"
    )
  grid = ids[:needed].reshape(frames, PLAN_FRAME_TOKENS)  # [F-1, 84]
  expected = np.zeros((PLAN_FRAME_TOKENS,), np.int64)
  expected[0] = plan_tokens.im_start
  expected[1] = plan_tokens.scale_token(PLAN_FRAME_SCALE)
  expected[-1] = plan_tokens.im_end
  is_code_column = np.zeros((PLAN_FRAME_TOKENS,), bool)
  is_code_column[2:-1] = True
  ok = np.where(is_code_column, plan_tokens.is_code(grid), grid == expected)  # [F-1, 84]
  if not ok.all():
    position = int(np.argmax(~ok.ravel()))
    column = position % PLAN_FRAME_TOKENS
    want = "a code token <I*>" if is_code_column[column] else _describe(int(expected[column]), plan_tokens)
    raise ValueError(
        f"malformed plan at position {position} (keyframe {position // PLAN_FRAME_TOKENS}, slot {column}): "
        f"expected {want}, found {_describe(int(ids[position]), plan_tokens)}"
    )
  if ids.shape[0] > needed and int(ids[needed]) not in (plan_tokens.chat_im_end, plan_tokens.endoftext):
    raise ValueError(
        f"malformed plan at position {needed}: expected end of turn <|im_end|> (id {plan_tokens.chat_im_end}) after "
        f"{frames} keyframes, found {_describe(int(ids[needed]), plan_tokens)}"
    )
  return (grid[:, 2:-1] - plan_tokens.code_offset).astype(np.int32)  # [F-1, 81]
