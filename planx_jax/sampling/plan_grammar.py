"""The plan grammar (DESIGN.md decision 2): F-1 x (`<im_start><S2>` + 81 codes + `<im_end>`), then `<|im_end|>`.

Describes and checks plans as array functions of the step counter; decoding lives in `planner_decode`.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from planx_jax.plan_tokens import CODES_PER_SCALE, NUM_SCALES, PlanTokens

PLAN_SCALE = 2  # keyframes are planned at TA-Tok scale 2 (9x9 pooled grid)
CODES_PER_KEYFRAME = CODES_PER_SCALE[PLAN_SCALE]  # 81
KEYFRAME_LEN = CODES_PER_KEYFRAME + 3  # <im_start> <S2> codes <im_end>


@dataclasses.dataclass(frozen=True)
class PlanGrammar:
  """The plan for `num_frames` video keyframes (the first is the prompt's image, so F-1 are planned).

  Step s counts the plan tokens emitted so far. `forced_token(s)` is the structural token at step s
  (or -1 where a code is sampled); codes are sampled only among `<I*>` ids (`code_range`).
  """

  plan_tokens: PlanTokens
  num_frames: int

  def __post_init__(self):
    if not isinstance(self.num_frames, int) or isinstance(self.num_frames, bool) or self.num_frames < 2:
      raise ValueError(f"num_frames must be an int >= 2 (the first frame plus at least one planned "
                       f"keyframe), got {self.num_frames!r}")

  @property
  def num_keyframes(self) -> int:
    return self.num_frames - 1

  @property
  def length(self) -> int:
    """Tokens in a whole plan: (F-1) * 84 + 1."""
    return self.num_keyframes * KEYFRAME_LEN + 1

  @property
  def code_range(self) -> tuple[int, int]:
    """Half-open id range of the code tokens `<I0>`..`<I{K-1}>`."""
    return self.plan_tokens.code_offset, self.plan_tokens.vocab_size

  def forced_token(self, step):
    """Structural token id at each step (any int array), -1 where a code is sampled.

    Steps at or after the last one force the end-of-turn token.
    """
    step = jnp.asarray(step)
    within = step % KEYFRAME_LEN
    pt = self.plan_tokens
    forced = jnp.where(within == 0, pt.im_start,
                       jnp.where(within == 1, pt.scale_token(PLAN_SCALE),
                                 jnp.where(within == KEYFRAME_LEN - 1, pt.im_end, -1)))
    return jnp.where(step >= self.length - 1, pt.chat_im_end, forced).astype(jnp.int32)

  def is_code_step(self, step):
    """True where the token at `step` is a sampled code."""
    return self.forced_token(step) < 0

  def template(self) -> np.ndarray:
    """int32 [length]: the forced token of every step, -1 at code steps."""
    return np.asarray(self.forced_token(np.arange(self.length)))

  def first_violation(self, token_ids, partial: bool = False) -> str | None:
    """Why `token_ids` ([T] or [B, T]) is not a plan (or, with `partial`, a plan's prefix); None if it is."""
    ids = np.asarray(token_ids)
    if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
      return f"a plan is an integer array [T] or [B, T], got {ids.dtype} of shape {ids.shape}"
    rows = ids if ids.ndim == 2 else ids[None]  # [B, T]
    t = rows.shape[-1]
    if (t > self.length) if partial else (t != self.length):
      expected = f"at most {self.length}" if partial else f"exactly {self.length}"
      return (f"plan of {t} tokens; {self.num_keyframes} keyframes take {expected} "
              f"({self.num_keyframes} x {KEYFRAME_LEN} + end-of-turn)")
    expected = self.template()[:t]
    code_step = expected < 0
    ok = np.where(code_step, self.plan_tokens.is_code(rows), rows == expected)  # [B, T]
    if ok.all():
      return None
    row, step = np.argwhere(~ok)[0]
    where = f"row {row}, step {step}" if ids.ndim == 2 else f"step {step}"
    want = "a code token <I*>" if code_step[step] else describe_token(int(expected[step]), self.plan_tokens)
    return f"{where} holds {describe_token(int(rows[row, step]), self.plan_tokens)}; the plan grammar expects {want}"

  def validate(self, token_ids, partial: bool = False) -> None:
    """Raise ValueError naming the first step that breaks the grammar."""
    message = self.first_violation(token_ids, partial)
    if message is not None:
      raise ValueError(message)

  def to_codes(self, token_ids) -> np.ndarray:
    """Plan tokens [..., length] -> code indices [..., F-1, 81] (validated)."""
    ids = np.asarray(token_ids)
    self.validate(ids.reshape(-1, ids.shape[-1]) if ids.ndim > 1 else ids)
    body = ids[..., :-1].reshape(*ids.shape[:-1], self.num_keyframes, KEYFRAME_LEN)  # [..., F-1, 84]
    return self.plan_tokens.id_to_code(body[..., 2:2 + CODES_PER_KEYFRAME])  # [..., F-1, 81]


def describe_token(token_id: int, plan_tokens: PlanTokens) -> str:
  """Readable name of a token id for error messages."""
  pt = plan_tokens
  names = {pt.im_start: "<im_start>", pt.im_end: "<im_end>", pt.chat_im_end: "<|im_end|>",
           pt.chat_im_start: "<|im_start|>", pt.endoftext: "<|endoftext|>"}
  names.update({pt.scale_token(s): f"<S{s}>" for s in range(NUM_SCALES)})
  if token_id in names:
    return f"{names[token_id]} (id {token_id})"
  if pt.is_code(token_id):
    return f"<I{token_id - pt.code_offset}> (id {token_id})"
  return f"text token id {token_id}"


def validate_plan(token_ids, plan_tokens: PlanTokens, num_frames: int, raise_error: bool = False) -> bool:
  """True iff `token_ids` ([T], or [B, T] where every row must pass) is a whole plan for `num_frames`.

  With `raise_error` a malformed plan raises ValueError naming the first offending step instead.
  """
  grammar = PlanGrammar(plan_tokens, num_frames)
  if raise_error:
    grammar.validate(token_ids)
    return True
  return grammar.first_violation(token_ids) is None


def plan_to_codes(token_ids, plan_tokens: PlanTokens) -> np.ndarray:
  """A whole plan [..., T] -> its keyframe codes [..., F-1, 81]; F is read from T = (F-1) * 84 + 1."""
  t = np.shape(token_ids)[-1]
  if t < KEYFRAME_LEN + 1 or (t - 1) % KEYFRAME_LEN:
    raise ValueError(f"plan of {t} tokens; a plan has (F-1) * {KEYFRAME_LEN} + 1 tokens with F >= 2")
  return PlanGrammar(plan_tokens, (t - 1) // KEYFRAME_LEN + 1).to_codes(token_ids)
