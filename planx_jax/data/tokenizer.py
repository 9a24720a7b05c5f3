"""Tokenizers for the planner: a tiny in-process ChatML tokenizer, Tar's plan tokens, local loading.

Maps the tokenizer's strings to the `PlanTokens` id layout (DESIGN.md decision 1); it does not build
conversations (see `planx_jax.data.conversation`) and never downloads anything.
"""

import os

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from planx_jax.plan_tokens import NUM_SCALES, PlanTokens

ENDOFTEXT = "<|endoftext|>"
CHAT_IM_START = "<|im_start|>"
CHAT_IM_END = "<|im_end|>"
CHATML_TOKENS = (ENDOFTEXT, CHAT_IM_START, CHAT_IM_END)

# Vocabulary of the tiny tokenizer before the ChatML specials: 256 byte symbols + BPE merges.
TINY_BPE_VOCAB_SIZE = 400

# Training text of the tiny tokenizer: scene and motion captions in the style of the planner prompts.
_TINY_CORPUS = (
    "You are a helpful assistant.",
    "Given the initial frame description: a red ball on a wooden floor, generate the subsequent frames of the "
    "initial frame based on the instruction: the ball rolls slowly to the left.",
    "A golden retriever runs across a green park while children play in the background.",
    "The camera slowly pans from left to right over a quiet city street at night.",
    "A woman in a blue dress walks along the beach as waves roll onto the sand.",
    "Two cars drive down a long road between tall trees in the autumn light.",
    "A chef chops fresh vegetables on a white cutting board in a bright kitchen.",
    "The sun sets behind the mountains and the sky turns orange, pink and purple.",
    "A small boat sails across a calm lake under a cloudy grey sky.",
    "A cat jumps from the sofa onto the table and knocks over a glass of water.",
    "Rain falls on the window while a man reads a book next to a warm lamp.",
    "A bird spreads its wings and flies from the branch toward the open field.",
    "The camera zooms in on a hand that pours hot coffee into a white cup.",
    "A young boy kicks a soccer ball toward the goal and the goalkeeper dives.",
    "Snow covers the houses of a small village as people walk along the street.",
    "A dancer spins on the stage under a bright spotlight and the crowd claps.",
    "The waves crash against the rocks and white foam rises into the air.",
    "A train moves through the countryside past fields of yellow flowers.",
    "An old man feeds pigeons in the square while the camera tracks him slowly.",
    "Smoke rises from a chimney as the wind moves the leaves of the trees.",
    "A girl opens the door, steps into the room and turns on the light.",
    "The horse gallops along the river and its shadow follows on the grass.",
    "A person picks up the phone from the desk and walks toward the window.",
    "Fireworks explode over the harbour and their light reflects on the water.",
    "The camera moves forward through a dark forest with tall green trees.",
    "A butterfly lands on a red flower and slowly opens and closes its wings.",
    "Traffic moves through a busy intersection while people cross the road.",
    "A robot arm lifts a metal box and places it on the moving belt.",
    "The candle flame flickers in the wind and the room becomes darker.",
    "A skier turns down the white slope and snow sprays behind the skis.",
)


def build_tiny_tokenizer(plan_tokens_codebook_size: int | None = None) -> transformers.PreTrainedTokenizerFast:
  """A small byte-level BPE tokenizer with Qwen's ChatML specials as its last entries.

  Trained in-process on a fixed caption corpus (deterministic, no downloads). Ids
  0..TINY_BPE_VOCAB_SIZE-1 are byte-level BPE tokens; then come `<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>` in Qwen2.5's order, as special added tokens.

  Args:
    plan_tokens_codebook_size: if given, Tar's plan tokens with this many codes are
      appended after the ChatML specials (`add_plan_tokens`).
  """
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=TINY_BPE_VOCAB_SIZE,
      min_frequency=1,
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=[],
  )
  backend.train_from_iterator(_TINY_CORPUS, trainer)
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATML_TOKENS])
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, eos_token=CHAT_IM_END, pad_token=ENDOFTEXT, clean_up_tokenization_spaces=False
  )
  if plan_tokens_codebook_size is not None:
    add_plan_tokens(tokenizer, plan_tokens_codebook_size)
  return tokenizer


def _token_id(tokenizer, token: str) -> int | None:
  """Id of `token` in the tokenizer (with added tokens), or None when absent (never the unk id)."""
  index = tokenizer.convert_tokens_to_ids(token)
  if index is None or tokenizer.convert_ids_to_tokens(int(index)) != token:
    return None
  return int(index)


def _chatml_ids(tokenizer) -> dict[str, int]:
  ids = {}
  for name, token in (("endoftext", ENDOFTEXT), ("chat_im_start", CHAT_IM_START), ("chat_im_end", CHAT_IM_END)):
    index = _token_id(tokenizer, token)
    if index is None:
      raise ValueError(
          f"tokenizer has no ChatML token {token!r}; the planner needs a Qwen2.5-style tokenizer with "
          f"{', '.join(CHATML_TOKENS)}"
      )
    ids[name] = index
  return ids


def _check_codebook_size(codebook_size) -> int:
  if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
    raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
  return codebook_size


def plan_tokens_from_tokenizer(tokenizer, codebook_size: int | None = None) -> PlanTokens:
  """The `PlanTokens` layout of a tokenizer.

  When the tokenizer holds Tar's plan tokens, `text_vocab_size` is the id of
  `<im_start>` and the codebook size is the number of `<I*>` tokens, which must be
  contiguous from `<I0>` = `<im_start>` + 5 (and equal `codebook_size` if given).
  Without plan tokens, they are assumed appended after the tokenizer:
  `text_vocab_size = len(tokenizer)`, and `codebook_size` is required.
  """
  chat = _chatml_ids(tokenizer)
  if codebook_size is not None:
    _check_codebook_size(codebook_size)
  im_start = _token_id(tokenizer, "<im_start>")
  if im_start is None:
    for marker in ["<im_end>"] + [f"<S{s}>" for s in range(NUM_SCALES)] + ["<I0>"]:
      if _token_id(tokenizer, marker) is not None:
        raise ValueError(f"tokenizer has plan token {marker!r} but no '<im_start>'; the plan tokens are incomplete")
    if codebook_size is None:
      raise ValueError("tokenizer has no plan tokens (<im_start>, <S*>, <I*>); pass codebook_size")
    return PlanTokens(text_vocab_size=len(tokenizer), codebook_size=codebook_size, **chat)

  layout = PlanTokens(text_vocab_size=im_start, codebook_size=1, **chat)
  markers = ["<im_start>", "<im_end>"] + [f"<S{s}>" for s in range(NUM_SCALES)]
  for offset, marker in enumerate(markers):
    found = _token_id(tokenizer, marker)
    if found != im_start + offset:
      raise ValueError(f"plan token {marker!r} has id {found}, expected {im_start + offset} (<im_start> + {offset})")
  tail = tokenizer.convert_ids_to_tokens(list(range(layout.code_offset, len(tokenizer))))
  found_codes = 0
  while found_codes < len(tail) and tail[found_codes] == f"<I{found_codes}>":
    found_codes += 1
  if found_codes == 0:
    raise ValueError(f"tokenizer has '<im_start>'={im_start} but no '<I0>' at id {layout.code_offset}")
  stray = _token_id(tokenizer, f"<I{found_codes}>")
  if stray is not None:
    raise ValueError(
        f"code tokens are not contiguous: '<I{found_codes}>' has id {stray}, expected "
        f"{layout.code_offset + found_codes}"
    )
  if codebook_size is not None and codebook_size != found_codes:
    raise ValueError(f"tokenizer has {found_codes} code tokens <I*>, but codebook_size={codebook_size}")
  return PlanTokens(text_vocab_size=im_start, codebook_size=found_codes, **chat)


def add_plan_tokens(tokenizer, codebook_size: int) -> PlanTokens:
  """Adds Tar's `<im_start>`, `<im_end>`, `<S0..2>`, `<I0..K-1>` as special tokens, in place.

  The first new id is `len(tokenizer)`. If `<im_start>` is already present (a Tar
  tokenizer), nothing is added: the existing layout is checked against
  `codebook_size` and returned. The tokens go to the Rust backend in one call.
  """
  _check_codebook_size(codebook_size)
  chat = _chatml_ids(tokenizer)
  if _token_id(tokenizer, "<im_start>") is not None:
    return plan_tokens_from_tokenizer(tokenizer, codebook_size)
  old_length = len(tokenizer)
  strings = PlanTokens(text_vocab_size=old_length, codebook_size=codebook_size, **chat).token_strings()
  vocab = tokenizer.get_vocab()
  present = [s for s in strings if s in vocab]
  if present:
    raise ValueError(
        f"tokenizer already has {len(present)} plan tokens (first {present[0]!r} at id {vocab[present[0]]}) "
        "but no '<im_start>'; cannot add a contiguous plan-token block"
    )
  added = tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in strings], special_tokens=True)
  if added != len(strings) or len(tokenizer) != old_length + len(strings):
    raise ValueError(
        f"adding {len(strings)} plan tokens added {added} and grew the tokenizer from {old_length} to {len(tokenizer)}"
    )
  return plan_tokens_from_tokenizer(tokenizer, codebook_size)


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
  """`AutoTokenizer.from_pretrained` on a local directory; never contacts the hub."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {os.fspath(path)!r} does not exist (only local paths are loaded)")
  return transformers.AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)


def check_tokenizer_layout(tokenizer, plan_tokens: PlanTokens) -> None:
  """Raises ValueError unless the tokenizer's ChatML and plan-token ids are those of `plan_tokens`.

  A few id look-ups, cheap enough to run per conversation. A tokenizer without plan
  tokens matches when `len(tokenizer) == plan_tokens.text_vocab_size`.
  """
  chat = _chatml_ids(tokenizer)
  for name, index in chat.items():
    if getattr(plan_tokens, name) != index:
      raise ValueError(f"tokenizer has {name}={index} but plan_tokens.{name}={getattr(plan_tokens, name)}")
  if _token_id(tokenizer, "<im_start>") is None:
    if len(tokenizer) != plan_tokens.text_vocab_size:
      raise ValueError(
          f"tokenizer has no plan tokens and {len(tokenizer)} entries, but plan_tokens.text_vocab_size="
          f"{plan_tokens.text_vocab_size}"
      )
    return
  expected = {"<im_start>": plan_tokens.im_start, "<im_end>": plan_tokens.im_end}
  expected.update({f"<S{s}>": plan_tokens.scale_token(s) for s in range(NUM_SCALES)})
  last = plan_tokens.codebook_size - 1
  expected.update({"<I0>": plan_tokens.code_offset, f"<I{last}>": plan_tokens.code_offset + last})
  expected[f"<I{last + 1}>"] = None
  for token, index in expected.items():
    found = _token_id(tokenizer, token)
    if found != index:
      raise ValueError(f"tokenizer maps {token!r} to id {found}, but plan_tokens expects {index}")


def planner_tokenizer(config) -> tuple[transformers.PreTrainedTokenizerBase, PlanTokens]:
  """(tokenizer, PlanTokens) of an experiment config (`planner.tokenizer`: a directory, or "" for the tiny test
  tokenizer; `codebook_size`: the TA-Tok codes)."""
  codebook_size = int(config.codebook_size)
  path = config.planner.tokenizer
  tokenizer = load_tokenizer(path) if path else build_tiny_tokenizer(codebook_size)
  return tokenizer, plan_tokens_from_tokenizer(tokenizer, codebook_size)
