"""Tests for the end-to-end semantic tokens at inference: the planner's hidden states at the planned codes must be
what end-to-end training reads (one conversation alone in a right-padded row, T2V first-frame slots zeroed).

Tiny in-process tokenizer and random tiny planner; the training side runs the pipeline's row builder and the task's
`planner_hidden` / `first_frame_zero_mask`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax import planner
from planx_jax.data.conversation import build_plan_conversation
from planx_jax.data.pipeline import _ConversationFields, _EndToEndRow
from planx_jax.data.tokenizer import build_tiny_tokenizer, plan_tokens_from_tokenizer
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.sampling.plan_semantics import plan_semantic_batch, plan_semantics
from planx_jax.train.tasks.common import first_frame_zero_mask, planner_hidden

CODEBOOK = 64
NUM_FRAMES = 3
RECORDS = [  # (image description, video prompt, with first frame): different lengths, one I2V and one T2V
    ("a red circle and a blue square on grey", "the red circle moves right, then the blue square jumps", True),
    ("a green triangle", "the triangle moves left", False),
]


@pytest.fixture(scope="module")
def tokenizer():
  return build_tiny_tokenizer(CODEBOOK)


@pytest.fixture(scope="module")
def plan_tokens(tokenizer):
  return plan_tokens_from_tokenizer(tokenizer, CODEBOOK)


@pytest.fixture(scope="module")
def config(plan_tokens):
  return PlannerConfig.tiny(vocab_size=plan_tokens.vocab_size)


@pytest.fixture(scope="module")
def params(config):
  return jax.jit(lambda rng: planner.init_params(config, rng))(jax.random.key(0))


_hidden = jax.jit(planner_hidden, static_argnums=0)  # the training function, compiled once per shape


def _record(index: int) -> dict:
  description, prompt, with_first = RECORDS[index]
  rng = np.random.default_rng(index)
  return {"image_description": description, "video_prompt": prompt, "has_first_frame": np.bool_(with_first),
          "codes_s0": rng.integers(0, CODEBOOK, (729,)), "codes_s2": rng.integers(0, CODEBOOK, (NUM_FRAMES, 81)),
          "latents": np.zeros((2, 2, 2, 8), np.float32), "text_emb": np.zeros((4, 8), np.float32)}


def _conversation(tokenizer, plan_tokens, record: dict, num_frames: int = NUM_FRAMES):
  return build_plan_conversation(
      tokenizer, plan_tokens, record["image_description"], record["video_prompt"], num_frames=num_frames,
      first_frame_codes=record["codes_s0"] if record["has_first_frame"] else None,
      plan_codes=record["codes_s2"][1:num_frames])


@pytest.fixture(scope="module")
def conversations(tokenizer, plan_tokens):
  convs = [_conversation(tokenizer, plan_tokens, _record(i)) for i in range(len(RECORDS))]
  assert len(convs[0]) != len(convs[1]) and convs[0].has_first_frame and not convs[1].has_first_frame
  return convs


def test_batch_points_at_the_planned_codes(conversations, plan_tokens):
  batch = plan_semantic_batch(conversations, plan_tokens.endoftext)
  length = max(len(c) for c in conversations)
  assert batch["semantic_index"].shape == (2, (NUM_FRAMES - 1) * 81)
  for row, conv in enumerate(conversations):
    n = len(conv)
    np.testing.assert_array_equal(batch["semantic_index"][row], np.flatnonzero(conv.loss_mask))
    assert plan_tokens.is_code(batch["token_ids"][row, batch["semantic_index"][row]]).all()
    np.testing.assert_array_equal(batch["token_ids"][row, :n], conv.token_ids)
    assert (batch["token_ids"][row, n:] == plan_tokens.endoftext).all()
    np.testing.assert_array_equal(batch["positions"][row], np.r_[np.arange(n), np.zeros(length - n)])
    np.testing.assert_array_equal(batch["segment_ids"][row], np.r_[np.ones(n), np.zeros(length - n)])
  assert not batch["zero_embed_mask"][0].any()  # I2V: the first frame is given
  np.testing.assert_array_equal(batch["zero_embed_mask"][1, :len(conversations[1])], conversations[1].first_frame_mask)
  assert batch["zero_embed_mask"][1].sum() == 729


def _training_semantics(config, params, tokenizer, plan_tokens, index: int, seq_len: int) -> np.ndarray:
  """What end-to-end training feeds the DiT for record `index`: its row, planner hidden states, gathered."""
  row = _EndToEndRow(_ConversationFields(tokenizer, plan_tokens), seq_len, plan_tokens.endoftext)(_record(index))
  batch = {name: jnp.asarray(value[None]) for name, value in row.items()
           if name not in ("latents", "text_emb", "has_first_frame")}
  zero = first_frame_zero_mask(jax.random.key(7), batch, 0.0)  # no random drop: only T2V slots are zeroed
  hidden = _hidden(config, params, batch, zero)  # [1, L, H]
  return np.asarray(jnp.take_along_axis(hidden, batch["semantic_index"][..., None], axis=1)[0])  # [S, H]


def test_semantics_equal_what_end_to_end_training_reads(config, params, tokenizer, plan_tokens, conversations):
  semantics = np.asarray(plan_semantics(config, params, conversations, plan_tokens.endoftext))
  assert semantics.shape == (2, (NUM_FRAMES - 1) * 81, config.hidden_size)
  assert semantics.dtype == np.float32
  seq_len = max(len(c) for c in conversations) + 40
  for index in range(len(conversations)):
    expected = _training_semantics(config, params, tokenizer, plan_tokens, index, seq_len)
    np.testing.assert_allclose(semantics[index], expected, atol=1e-5, rtol=1e-5)


def test_t2v_first_frame_slots_are_zeroed(config, params, plan_tokens, conversations):
  t2v = conversations[1]
  semantics = np.asarray(plan_semantics(config, params, [t2v], plan_tokens.endoftext))[0]
  n = len(t2v)
  batch = {"token_ids": jnp.asarray(t2v.token_ids[None]), "positions": jnp.arange(n)[None],
           "segment_ids": jnp.ones((1, n), jnp.int32)}
  hidden = np.asarray(_hidden(config, params, batch, jnp.zeros((1, n), bool)))[0]  # placeholders kept
  assert np.max(np.abs(semantics - hidden[np.flatnonzero(t2v.loss_mask)])) > 1e-4
  zeroed = np.asarray(_hidden(config, params, batch, jnp.asarray(t2v.first_frame_mask[None])))[0]
  np.testing.assert_allclose(semantics, zeroed[np.flatnonzero(t2v.loss_mask)], atol=1e-5, rtol=1e-5)


def test_rejects_conversations_without_equal_plans(tokenizer, plan_tokens, conversations):
  shorter = _conversation(tokenizer, plan_tokens, _record(1), num_frames=2)
  with pytest.raises(ValueError, match=r"same length.*\[81, 162\]"):
    plan_semantic_batch([conversations[0], shorter], plan_tokens.endoftext)
  prompt_only = build_plan_conversation(tokenizer, plan_tokens, RECORDS[0][0], RECORDS[0][1], num_frames=NUM_FRAMES)
  with pytest.raises(ValueError, match="same length"):
    plan_semantic_batch([prompt_only], plan_tokens.endoftext)
  with pytest.raises(ValueError, match="no conversations"):
    plan_semantic_batch([], plan_tokens.endoftext)


def test_plan_semantics_rejects_before_tracing(config, params, plan_tokens):
  with pytest.raises(ValueError, match="no conversations"):
    plan_semantics(config, params, [], plan_tokens.endoftext)
