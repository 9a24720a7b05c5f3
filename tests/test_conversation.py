"""Tests for the planner conversation (Plan-X Figure 6) and the tokenizer helpers.

Tiny in-process tokenizers only; the real Qwen2.5 layout is checked through its spec constants.
"""

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from planx_jax.data import conversation as conv_lib
from planx_jax.data import tokenizer as tok_lib
from planx_jax.plan_tokens import PlanTokens

K = 1024
IMAGE = "a red ball on a wooden floor"
PROMPT = "the ball rolls slowly to the left"


@pytest.fixture(scope="module")
def tokenizer():
  return tok_lib.build_tiny_tokenizer(K)


@pytest.fixture(scope="module")
def plan_tokens(tokenizer):
  return tok_lib.plan_tokens_from_tokenizer(tokenizer)


def _codes(num_frames, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, K, (729,)), rng.integers(0, K, (num_frames - 1, 81))


def _build(tokenizer, plan_tokens, num_frames, with_first=True, with_plan=True, seed=0):
  first, plan = _codes(num_frames, seed)
  return conv_lib.build_plan_conversation(
      tokenizer, plan_tokens, IMAGE, PROMPT, num_frames,
      first_frame_codes=first if with_first else None, plan_codes=plan if with_plan else None)


def _encode(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False)


# Tokenizer.


def test_tiny_tokenizer_is_deterministic_with_chatml_last():
  a, b = tok_lib.build_tiny_tokenizer(), tok_lib.build_tiny_tokenizer()
  assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
  n = tok_lib.TINY_BPE_VOCAB_SIZE
  assert len(a) == n + 3
  assert a.convert_ids_to_tokens([n, n + 1, n + 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  text = "A cat jumps onto the table."
  assert _encode(a, text) == _encode(b, text)
  assert len(_encode(a, text)) < len(text.encode())  # BPE merges learned, not bytes only
  assert _encode(a, "x<|im_start|>y<|im_end|>") == _encode(a, "x") + [n + 1] + _encode(a, "y") + [n + 2]


def test_add_plan_tokens_follows_tar_layout_and_is_idempotent():
  tok = tok_lib.build_tiny_tokenizer()
  old = len(tok)
  layout = tok_lib.add_plan_tokens(tok, K)
  assert layout.text_vocab_size == old
  assert len(tok) == old + 5 + K
  names = ["<im_start>", "<im_end>", "<S0>", "<S1>", "<S2>", "<I0>", "<I1>", f"<I{K - 1}>"]
  assert tok.convert_tokens_to_ids(names) == [old, old + 1, old + 2, old + 3, old + 4, old + 5, old + 6, old + 4 + K]
  assert (layout.im_start, layout.scale_token(2), layout.code_offset, layout.vocab_size) == (
      old, old + 4, old + 5, old + 5 + K)
  assert (layout.chat_im_start, layout.chat_im_end, layout.endoftext) == (old - 2, old - 1, old - 3)
  again = tok_lib.add_plan_tokens(tok, K)
  assert again == layout and len(tok) == old + 5 + K
  assert tok_lib.plan_tokens_from_tokenizer(tok) == layout
  with pytest.raises(ValueError, match=f"has {K} code tokens.*codebook_size={K // 2}"):
    tok_lib.add_plan_tokens(tok, K // 2)
  # Plan tokens are single ids inside text.
  assert _encode(tok, "a<im_start><S2><I7><im_end>") == _encode(tok, "a") + [old, old + 4, old + 5 + 7, old + 1]


def test_add_plan_tokens_full_codebook():
  tok = tok_lib.build_tiny_tokenizer()
  old = len(tok)
  layout = tok_lib.add_plan_tokens(tok, 65536)
  assert len(tok) == old + 5 + 65536 == layout.vocab_size
  assert tok.convert_tokens_to_ids("<I65535>") == old + 5 + 65535
  assert tok_lib.add_plan_tokens(tok, 65536) == layout


def test_qwen2_5_layout_defaults_match_spec():
  # specs/planner_qwen2.md: Qwen2.5 tokenizer length 151665, ChatML 151643..151645, <I0>=151670, 217206 rows.
  layout = PlanTokens()
  assert (layout.endoftext, layout.chat_im_start, layout.chat_im_end) == (151643, 151644, 151645)
  assert (layout.im_start, layout.im_end, layout.scale_token(0), layout.scale_token(2)) == (
      151665, 151666, 151667, 151669)
  assert layout.code_offset == 151670
  assert layout.vocab_size == 217206
  assert layout.code_to_id(65535) == 217205


def test_plan_tokens_from_tokenizer_without_plan_tokens():
  tok = tok_lib.build_tiny_tokenizer()
  with pytest.raises(ValueError, match="pass codebook_size"):
    tok_lib.plan_tokens_from_tokenizer(tok)
  layout = tok_lib.plan_tokens_from_tokenizer(tok, codebook_size=K)
  assert layout.text_vocab_size == len(tok) and layout.codebook_size == K
  assert layout == tok_lib.add_plan_tokens(tok, K)


def test_partial_plan_tokens_rejected():
  tok = tok_lib.build_tiny_tokenizer()
  tok.add_tokens(["<I0>"], special_tokens=True)
  with pytest.raises(ValueError, match="'<I0>' but no '<im_start>'"):
    tok_lib.plan_tokens_from_tokenizer(tok, codebook_size=K)
  with pytest.raises(ValueError, match="already has 1 plan tokens"):
    tok_lib.add_plan_tokens(tok, K)


def _tokenizer_without_chatml():
  backend = Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.train_from_iterator(["a ball rolls"], trainers.BpeTrainer(vocab_size=260, show_progress=False))
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend)


def test_tokenizer_missing_chatml_rejected(plan_tokens):
  tok = _tokenizer_without_chatml()
  with pytest.raises(ValueError, match="no ChatML token '<\\|endoftext\\|>'"):
    tok_lib.plan_tokens_from_tokenizer(tok, codebook_size=K)
  with pytest.raises(ValueError, match="no ChatML token"):
    tok_lib.add_plan_tokens(tok, K)
  with pytest.raises(ValueError, match="no ChatML token"):
    _build(tok, plan_tokens, 3)


def test_load_tokenizer_local_round_trip(tmp_path, tokenizer, plan_tokens):
  tokenizer.save_pretrained(tmp_path)
  loaded = tok_lib.load_tokenizer(tmp_path)
  assert tok_lib.plan_tokens_from_tokenizer(loaded) == plan_tokens
  conv = _build(tokenizer, plan_tokens, 3)
  text = tokenizer.decode(conv.token_ids.tolist(), skip_special_tokens=False)
  assert _encode(loaded, text) == conv.token_ids.tolist()
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match="nope"):
    tok_lib.load_tokenizer(missing)


# Conversation.


def test_user_instruction_is_figure_6():
  text = conv_lib.user_instruction("a dog", "it runs", 5)
  assert text == ("Given the initial frame description: a dog, generate the subsequent 4 frames of the initial frame "
                  "based on the instruction: it runs.\n")
  assert conv_lib.FIRST_FRAME_CODES == 729 and conv_lib.PLAN_FRAME_CODES == 81


@pytest.mark.parametrize("num_frames", [2, 5])
@pytest.mark.parametrize("with_first", [True, False])
def test_token_ids_round_trip_through_tokenizer(tokenizer, plan_tokens, num_frames, with_first):
  conv = _build(tokenizer, plan_tokens, num_frames, with_first=with_first)
  for ids in (conv.token_ids, conv.token_ids[:conv.prompt_length]):
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert _encode(tokenizer, text) == ids.tolist()
  text = tokenizer.decode(conv.token_ids.tolist(), skip_special_tokens=False)
  assert text.startswith(f"<|im_start|>system\n{conv_lib.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
  assert text.endswith("<im_end><|im_end|>\n")
  assert f"<|im_end|>\n<|im_start|>assistant\n<im_start><S2>" in text


@pytest.mark.parametrize("num_frames", [2, 5])
def test_loss_mask_covers_exactly_the_assistant_codes(tokenizer, plan_tokens, num_frames):
  first, plan = _codes(num_frames)
  conv = _build(tokenizer, plan_tokens, num_frames)
  ids, p = conv.token_ids, conv.prompt_length
  assert ids.dtype == np.int32 and conv.loss_mask.dtype == bool and conv.first_frame_mask.dtype == bool
  assert conv.loss_mask.shape == conv.first_frame_mask.shape == ids.shape
  assert conv.loss_mask.sum() == (num_frames - 1) * 81
  # Independently derived positions: keyframe j's codes sit at p + 84 j + 2 .. p + 84 j + 82.
  expected = np.concatenate([p + 84 * j + 2 + np.arange(81) for j in range(num_frames - 1)])
  np.testing.assert_array_equal(np.flatnonzero(conv.loss_mask), expected)
  np.testing.assert_array_equal(ids[expected], plan.ravel() + plan_tokens.code_offset)
  for j in range(num_frames - 1):
    assert ids[p + 84 * j] == plan_tokens.im_start and ids[p + 84 * j + 1] == plan_tokens.scale_token(2)
    assert ids[p + 84 * j + 83] == plan_tokens.im_end
  tail = ids[p + 84 * (num_frames - 1):].tolist()
  assert tail == [plan_tokens.chat_im_end] + _encode(tokenizer, "\n")
  assert not conv.loss_mask[:p].any()


@pytest.mark.parametrize("num_frames", [2, 5])
def test_first_frame_mask_is_the_user_image(tokenizer, plan_tokens, num_frames):
  first, _ = _codes(num_frames)
  conv = _build(tokenizer, plan_tokens, num_frames)
  ids = conv.token_ids
  where = np.flatnonzero(conv.first_frame_mask)
  assert where.size == 729 and np.all(np.diff(where) == 1)
  np.testing.assert_array_equal(ids[where], first + plan_tokens.code_offset)
  a, b = where[0], where[-1] + 1
  assert ids[a - 2:a].tolist() == [plan_tokens.im_start, plan_tokens.scale_token(0)]
  assert ids[b:b + 2].tolist() == [plan_tokens.im_end, plan_tokens.chat_im_end]
  chat_starts = np.flatnonzero(ids == plan_tokens.chat_im_start)
  assert len(chat_starts) == 3 and chat_starts[1] < a and b < chat_starts[2] < conv.prompt_length
  user_text = tokenizer.decode(ids[chat_starts[1] + 1:a - 2].tolist(), skip_special_tokens=False)
  assert user_text == "user\n" + conv_lib.user_instruction(IMAGE, PROMPT, num_frames)
  assert not (conv.first_frame_mask & conv.loss_mask).any()


def test_text_to_video_uses_placeholders(tokenizer, plan_tokens):
  i2v = _build(tokenizer, plan_tokens, 3)
  t2v = _build(tokenizer, plan_tokens, 3, with_first=False)
  assert i2v.has_first_frame and not t2v.has_first_frame
  np.testing.assert_array_equal(t2v.first_frame_mask, i2v.first_frame_mask)
  assert np.all(t2v.token_ids[t2v.first_frame_mask] == plan_tokens.code_to_id(0))
  np.testing.assert_array_equal(t2v.token_ids[~t2v.first_frame_mask], i2v.token_ids[~i2v.first_frame_mask])


@pytest.mark.parametrize("num_frames", [2, 5])
def test_generation_prompt_is_prefix(tokenizer, plan_tokens, num_frames):
  full = _build(tokenizer, plan_tokens, num_frames)
  prompt = _build(tokenizer, plan_tokens, num_frames, with_plan=False)
  assert len(prompt) == prompt.prompt_length == full.prompt_length
  np.testing.assert_array_equal(prompt.token_ids, full.token_ids[:full.prompt_length])
  np.testing.assert_array_equal(prompt.first_frame_mask, full.first_frame_mask[:full.prompt_length])
  assert not prompt.loss_mask.any()
  text = tokenizer.decode(prompt.token_ids.tolist(), skip_special_tokens=False)
  assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("num_frames", [2, 5])
def test_parse_back_round_trip(tokenizer, plan_tokens, num_frames):
  _, plan = _codes(num_frames)
  conv = _build(tokenizer, plan_tokens, num_frames)
  response = conv.token_ids[conv.prompt_length:]
  parsed = conv_lib.plan_codes_from_tokens(response, plan_tokens, num_frames)
  assert parsed.dtype == np.int32
  np.testing.assert_array_equal(parsed, plan)
  no_end = response[:(num_frames - 1) * 84]
  np.testing.assert_array_equal(conv_lib.plan_codes_from_tokens(no_end, plan_tokens, num_frames), plan)


def test_parse_errors_name_position_and_tokens(tokenizer, plan_tokens):
  conv = _build(tokenizer, plan_tokens, 3)
  response = np.array(conv.token_ids[conv.prompt_length:])
  bad = response.copy()
  bad[84 + 83] = plan_tokens.code_to_id(5)
  with pytest.raises(ValueError, match=r"position 167 \(keyframe 1, slot 83\): expected <im_end> .*found <I5>"):
    conv_lib.plan_codes_from_tokens(bad, plan_tokens, 3)
  bad = response.copy()
  bad[10] = plan_tokens.im_end
  with pytest.raises(ValueError, match=r"position 10 .*expected a code token <I\*>, found <im_end>"):
    conv_lib.plan_codes_from_tokens(bad, plan_tokens, 3)
  bad = response.copy()
  bad[1] = plan_tokens.scale_token(0)
  with pytest.raises(ValueError, match=r"position 1 .*expected <S2> .*found <S0>"):
    conv_lib.plan_codes_from_tokens(bad, plan_tokens, 3)
  with pytest.raises(ValueError, match="response has 100 tokens; 2 planned keyframes need 168"):
    conv_lib.plan_codes_from_tokens(response[:100], plan_tokens, 3)
  with pytest.raises(ValueError, match=r"position 84: expected end of turn .*found <im_start>"):
    conv_lib.plan_codes_from_tokens(response, plan_tokens, 2)
  with pytest.raises(ValueError, match="at least 2"):
    conv_lib.plan_codes_from_tokens(response, plan_tokens, 1)


@pytest.mark.parametrize("num_frames", [1, 0, -3])
def test_num_frames_below_two_rejected(tokenizer, plan_tokens, num_frames):
  with pytest.raises(ValueError, match=f"F must be at least 2.*F={num_frames}"):
    conv_lib.build_plan_conversation(tokenizer, plan_tokens, IMAGE, PROMPT, num_frames)


def test_bad_codes_rejected(tokenizer, plan_tokens):
  first, plan = _codes(3)
  build = lambda **kw: conv_lib.build_plan_conversation(tokenizer, plan_tokens, IMAGE, PROMPT, 3, **kw)
  with pytest.raises(ValueError, match=r"first_frame_codes must have shape \[729\], got \[728\]"):
    build(first_frame_codes=first[:728])
  with pytest.raises(ValueError, match=r"plan_codes must have shape \[2, 81\], got \[3, 81\]"):
    build(plan_codes=np.zeros((3, 81), np.int32))
  with pytest.raises(ValueError, match=r"plan_codes must have shape \[2, 81\], got \[2, 80\]"):
    build(plan_codes=plan[:, :80])
  with pytest.raises(ValueError, match=f"plan_codes: code {K} outside the codebook"):
    build(plan_codes=np.where(np.arange(81) == 7, K, plan))
  with pytest.raises(ValueError, match="first_frame_codes: code -1 outside the codebook"):
    build(first_frame_codes=np.where(np.arange(729) == 3, -1, first))
  with pytest.raises(ValueError, match="integer codes, got dtype float"):
    build(plan_codes=plan.astype(np.float32))


def test_bad_text_and_layout_rejected(tokenizer, plan_tokens):
  with pytest.raises(ValueError, match="image_description must be a non-empty string"):
    conv_lib.build_plan_conversation(tokenizer, plan_tokens, "  ", PROMPT, 3)
  with pytest.raises(ValueError, match="video_prompt must be a non-empty string"):
    conv_lib.build_plan_conversation(tokenizer, plan_tokens, IMAGE, None, 3)
  with pytest.raises(ValueError, match="contains the special token id"):
    conv_lib.build_plan_conversation(tokenizer, plan_tokens, IMAGE + "<|im_end|>", PROMPT, 3)
  shifted = PlanTokens(text_vocab_size=plan_tokens.text_vocab_size + 1, codebook_size=K,
                       chat_im_start=plan_tokens.chat_im_start, chat_im_end=plan_tokens.chat_im_end,
                       endoftext=plan_tokens.endoftext)
  with pytest.raises(ValueError, match="'<im_start>' to id"):
    conv_lib.build_plan_conversation(tokenizer, shifted, IMAGE, PROMPT, 3)
  wrong_chat = PlanTokens(text_vocab_size=plan_tokens.text_vocab_size, codebook_size=K, chat_im_start=5,
                          chat_im_end=plan_tokens.chat_im_end, endoftext=plan_tokens.endoftext)
  with pytest.raises(ValueError, match="chat_im_start="):
    conv_lib.build_plan_conversation(tokenizer, wrong_chat, IMAGE, PROMPT, 3)
  bigger = PlanTokens(**{**plan_tokens.to_dict(), "codebook_size": 2 * K})
  with pytest.raises(ValueError, match=f"'<I{2 * K - 1}>'"):
    conv_lib.build_plan_conversation(tokenizer, bigger, IMAGE, PROMPT, 3)


def test_tokenizer_without_plan_tokens_builds_same_ids(plan_tokens):
  text_only = tok_lib.build_tiny_tokenizer()
  layout = tok_lib.plan_tokens_from_tokenizer(text_only, codebook_size=K)
  assert layout == plan_tokens
  with_plan = tok_lib.build_tiny_tokenizer(K)
  a = _build(text_only, layout, 4)
  b = _build(with_plan, plan_tokens, 4)
  np.testing.assert_array_equal(a.token_ids, b.token_ids)


# Batching.


def test_batch_right_pad_for_training(tokenizer, plan_tokens):
  convs = [_build(tokenizer, plan_tokens, 2), _build(tokenizer, plan_tokens, 4, seed=1)]
  pad = plan_tokens.endoftext
  batch = conv_lib.batch_conversations(convs, pad_id=pad)
  lengths = [len(c) for c in convs]
  t = max(lengths)
  assert batch["token_ids"].shape == (2, t) and batch["token_ids"].dtype == np.int32
  np.testing.assert_array_equal(batch["lengths"], lengths)
  for i, conv in enumerate(convs):
    n = lengths[i]
    np.testing.assert_array_equal(batch["token_ids"][i, :n], conv.token_ids)
    assert np.all(batch["token_ids"][i, n:] == pad)
    np.testing.assert_array_equal(batch["segment_ids"][i], np.arange(t) < n)
    np.testing.assert_array_equal(batch["loss_mask"][i, :n], conv.loss_mask)
    np.testing.assert_array_equal(batch["first_frame_mask"][i, :n], conv.first_frame_mask)
    assert not batch["loss_mask"][i, n:].any() and not batch["first_frame_mask"][i, n:].any()
    np.testing.assert_array_equal(batch["positions"][i, :n], np.arange(n))
  np.testing.assert_array_equal(batch["prompt_lengths"], [c.prompt_length for c in convs])
  assert batch["loss_mask"].sum() == (1 + 3) * 81


def test_batch_left_pad_for_prompts(tokenizer, plan_tokens):
  long_image = IMAGE + ", next to a tall green plant and a small wooden chair"
  prompts = [
      _build(tokenizer, plan_tokens, 3, with_plan=False),
      conv_lib.build_plan_conversation(tokenizer, plan_tokens, long_image, PROMPT, 3),
  ]
  lengths = [len(c) for c in prompts]
  assert lengths[0] != lengths[1]
  batch = conv_lib.batch_conversations(prompts, pad_id=0, max_length=max(lengths) + 3, left_pad=True)
  t = max(lengths) + 3
  for i, conv in enumerate(prompts):
    n = lengths[i]
    np.testing.assert_array_equal(batch["token_ids"][i, t - n:], conv.token_ids)
    assert np.all(batch["token_ids"][i, :t - n] == 0)
    np.testing.assert_array_equal(batch["segment_ids"][i], np.arange(t) >= t - n)
    np.testing.assert_array_equal(batch["positions"][i, t - n:], np.arange(n))
    assert np.all(batch["positions"][i, :t - n] == 0)
  assert np.all(batch["token_ids"][:, -1] == batch["token_ids"][0, -1])


def test_batch_errors(tokenizer, plan_tokens):
  short, conv = _build(tokenizer, plan_tokens, 2), _build(tokenizer, plan_tokens, 3)
  with pytest.raises(ValueError, match=f"conversation 1 has {len(conv)} tokens, more than max_length={len(short)}"):
    conv_lib.batch_conversations([short, conv], pad_id=0, max_length=len(short))
  with pytest.raises(ValueError, match="at least one conversation"):
    conv_lib.batch_conversations([], pad_id=0)
  with pytest.raises(ValueError, match="pad_id must be a non-negative int"):
    conv_lib.batch_conversations([conv], pad_id=-1)
