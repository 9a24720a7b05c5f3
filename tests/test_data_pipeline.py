"""Tests for the grain training pipelines: batch formats per stage, packing, shuffling, per-process rows, resume.

Synthetic records and the tiny tokenizer; every expectation is rebuilt from the records with build_plan_conversation.
"""

import json

import numpy as np
import pytest

from planx_jax.data import pipeline
from planx_jax.data.conversation import build_plan_conversation
from planx_jax.data.records import RecordShapes
from planx_jax.data.synthetic import SyntheticSource
from planx_jax.data.tfds_builder import build_dataset, load_dataset
from planx_jax.data.tokenizer import build_tiny_tokenizer, plan_tokens_from_tokenizer

CODEBOOK = 64
SHAPES = RecordShapes.tiny()  # K=3: a conversation is ~1030 tokens
SEQ_LEN = 3200  # fits three conversations per packed row
NUM_RECORDS = 12
# The batch layout each SFT stage's task reads (`Task.batch_layout`).
STAGE_LAYOUTS = {"planner_sft": pipeline.PACKED_CONVERSATIONS, "dit_sft": pipeline.DIT_EXAMPLES,
                 "dit_stage1": pipeline.DIT_EXAMPLES, "end_to_end": pipeline.CONVERSATION_WITH_DIT}


@pytest.fixture(scope="module")
def tokenizer():
  return build_tiny_tokenizer(CODEBOOK)


@pytest.fixture(scope="module")
def plan_tokens(tokenizer):
  return plan_tokens_from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def source():
  return SyntheticSource(SHAPES, CODEBOOK, num_records=NUM_RECORDS, seed=0)


@pytest.fixture(scope="module")
def index_of(source):
  """Latents bytes -> record index (synthetic latents carry per-record noise, so they identify the record)."""
  return {source[i]["latents"].tobytes(): i for i in range(len(source))}


def _iterator(source, tokenizer, plan_tokens, stage, **kwargs):
  kwargs = {"layout": STAGE_LAYOUTS.get(stage), "batch_size": 4, "seed": 7, "seq_len": SEQ_LEN, **kwargs}
  return pipeline.make_iterator(source, stage=stage, tokenizer=tokenizer, plan_tokens=plan_tokens, **kwargs)


def _take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


def _conversation(tokenizer, plan_tokens, record):
  first = record["codes_s0"] if record["has_first_frame"] else None
  return build_plan_conversation(tokenizer, plan_tokens, record["image_description"], record["video_prompt"],
                                 num_frames=SHAPES.num_keyframes, first_frame_codes=first,
                                 plan_codes=record["codes_s2"][1:])


def _record_order(source, tokenizer, plan_tokens, index_of, steps, **kwargs):
  batches = _take(_iterator(source, tokenizer, plan_tokens, "dit_stage1", **kwargs), steps)
  return [index_of[latents.tobytes()] for batch in batches for latents in batch["latents"]]


@pytest.mark.parametrize("stage", STAGE_LAYOUTS)
def test_batches_match_batch_spec_and_resume_exactly(source, tokenizer, plan_tokens, stage):
  iterator = _iterator(source, tokenizer, plan_tokens, stage)
  first = _take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = _take(iterator, 2)
  spec = pipeline.batch_spec(STAGE_LAYOUTS[stage], 4, SEQ_LEN, SHAPES)
  for batch in first + expected:
    assert {name: (value.shape, value.dtype) for name, value in batch.items()} == spec
  resumed = _iterator(source, tokenizer, plan_tokens, stage)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 2)):
    for name in spec:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  name = next(iter(spec))
  assert not np.array_equal(first[-1][name], expected[0][name])  # a stale batch would not pass


@pytest.mark.parametrize("stage", STAGE_LAYOUTS)
def test_reader_threads_do_not_change_the_batches(source, tokenizer, plan_tokens, stage):
  threaded = _take(_iterator(source, tokenizer, plan_tokens, stage, num_threads=3, prefetch=3), 2)
  on_demand = _take(_iterator(source, tokenizer, plan_tokens, stage, num_threads=0, prefetch=0), 2)
  for want, got in zip(on_demand, threaded):
    for name in want:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_restoring_another_pipelines_state_is_an_error(source, tokenizer, plan_tokens):
  iterator = _iterator(source, tokenizer, plan_tokens, "dit_stage1")
  next(iterator)
  state = iterator.get_state()
  other = _iterator(source, tokenizer, plan_tokens, "dit_stage1", seed=8)
  with pytest.raises(ValueError, match=r"state is from another pipeline: .* differ in \{'seed': \(7, 8\)\}"):
    other.set_state(state)


def test_shuffle_is_a_per_epoch_permutation_fixed_by_the_seed(source, tokenizer, plan_tokens, index_of):
  epochs = 2 * NUM_RECORDS // 4
  order = _record_order(source, tokenizer, plan_tokens, index_of, epochs)
  assert order == _record_order(source, tokenizer, plan_tokens, index_of, epochs)
  first_epoch, second_epoch = order[:NUM_RECORDS], order[NUM_RECORDS:]
  assert sorted(first_epoch) == sorted(second_epoch) == list(range(NUM_RECORDS))
  assert first_epoch != second_epoch and first_epoch != list(range(NUM_RECORDS))
  assert _record_order(source, tokenizer, plan_tokens, index_of, epochs, seed=8) != order


@pytest.mark.parametrize("stage", STAGE_LAYOUTS)
def test_processes_get_disjoint_rows_of_the_same_global_batches(source, tokenizer, plan_tokens, index_of, stage):
  steps = NUM_RECORDS // 4 if stage != "planner_sft" else 1  # one epoch, or twelve packed conversations
  single = _take(_iterator(source, tokenizer, plan_tokens, stage), steps)
  shards = [_take(_iterator(source, tokenizer, plan_tokens, stage, process_index=p, process_count=2), steps)
            for p in range(2)]
  for step, batch in enumerate(single):
    for name, value in batch.items():
      assert shards[0][step][name].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([shards[p][step][name] for p in range(2)]), value, err_msg=name)
  if stage != "planner_sft":
    seen = [[index_of[x.tobytes()] for batch in shards[p] for x in batch["latents"]] for p in range(2)]
    assert len(set(seen[0])) == len(set(seen[1])) == NUM_RECORDS // 2
    assert sorted(seen[0] + seen[1]) == list(range(NUM_RECORDS))


def test_packing_lines_up_with_the_unpacked_conversations(source, tokenizer, plan_tokens, index_of):
  # One row stream (B=1): packed rows hold global elements 0, 1, 2, ... in order, as many as fit.
  packed = _take(_iterator(source, tokenizer, plan_tokens, "planner_sft", batch_size=1), 2)
  order = _record_order(source, tokenizer, plan_tokens, index_of, 8, batch_size=1)
  element = 0
  for batch in packed:
    segments = batch["segment_ids"][0]
    count = int(segments.max())
    assert count >= 2
    end = 0
    for segment in range(1, count + 1):
      span = np.flatnonzero(segments == segment)
      assert span[0] == end and np.all(np.diff(span) == 1)
      conv = _conversation(tokenizer, plan_tokens, source[order[element]])
      assert len(span) == len(conv)
      np.testing.assert_array_equal(batch["token_ids"][0, span], conv.token_ids)
      np.testing.assert_array_equal(batch["positions"][0, span], np.arange(len(conv)))
      np.testing.assert_array_equal(batch["loss_mask"][0, span], conv.loss_mask)
      np.testing.assert_array_equal(batch["first_frame_mask"][0, span], conv.first_frame_mask)
      np.testing.assert_array_equal(batch["first_frame_given"][0, span], conv.first_frame_mask & conv.has_first_frame)
      element, end = element + 1, span[-1] + 1
    # The next conversation did not fit; the rest of the row is padding.
    assert end + len(_conversation(tokenizer, plan_tokens, source[order[element]])) > SEQ_LEN
    assert not segments[end:].any() and not batch["positions"][0, end:].any()
    assert np.all(batch["token_ids"][0, end:] == plan_tokens.endoftext)
    assert not (batch["loss_mask"][0, end:] | batch["first_frame_mask"][0, end:]).any()


def test_end_to_end_rows_hold_one_conversation_and_its_semantic_index(source, tokenizer, plan_tokens, index_of):
  batch = next(_iterator(source, tokenizer, plan_tokens, "end_to_end", seq_len=1100))
  for row in range(4):
    record = source[index_of[batch["latents"][row].tobytes()]]
    conv = _conversation(tokenizer, plan_tokens, record)
    n = len(conv)
    np.testing.assert_array_equal(batch["token_ids"][row, :n], conv.token_ids)
    np.testing.assert_array_equal(batch["segment_ids"][row], np.arange(1100) < n)
    np.testing.assert_array_equal(batch["positions"][row, :n], np.arange(n))
    index = batch["semantic_index"][row]
    # The planned codes of keyframes 1..K-1, in order, sit at the semantic indices.
    codes = plan_tokens.id_to_code(batch["token_ids"][row, index])
    np.testing.assert_array_equal(codes, record["codes_s2"][1:].reshape(-1))
    assert batch["semantic_mask"][row].all() and batch["loss_mask"][row, index].all()
    assert batch["loss_mask"][row].sum() == index.size
    assert batch["has_first_frame"][row] == record["has_first_frame"]
    np.testing.assert_array_equal(batch["text_emb"][row], record["text_emb"])


def test_tfds_source_feeds_the_same_batches(tmp_path, source, tokenizer, plan_tokens):
  loaded = load_dataset(build_dataset(tmp_path / "ds", records=source, shapes=SHAPES, codebook_size=CODEBOOK))
  for want, got in zip(_take(_iterator(source, tokenizer, plan_tokens, "end_to_end"), 2),
                       _take(_iterator(loaded, tokenizer, plan_tokens, "end_to_end"), 2)):
    for name in want:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_bad_pipeline_arguments_are_clear_errors(source, tokenizer, plan_tokens):
  def bad(message, stage="planner_sft", **kwargs):
    with pytest.raises(ValueError, match=message):
      next(_iterator(source, tokenizer, plan_tokens, stage, **kwargs))

  bad("batch_size=6 is not divisible by process_count=4", batch_size=6, process_count=4)
  bad(r"process_index must be an int in \[0, 2\), got 2", process_index=2, process_count=2)
  bad("unknown batch layout 'sft'; layouts are packed_conversations, dit_examples, conversation_with_dit",
      layout="sft")
  bad(r"a planner conversation has 10\d\d tokens, more than seq_len=1000; raise seq_len", seq_len=1000)
  bad(r"a planner conversation has 10\d\d tokens, more than seq_len=1000", stage="end_to_end", seq_len=1000)
  bad("seed must be an int in", seed=-1)
  bad("codebook sizes disagree", codebook_size=32)
  bad("the source's shapes .* differ from shapes=", shapes=RecordShapes.tiny(num_keyframes=2))
  with pytest.raises(ValueError, match="stage 'end_to_end' needs the planner's tokenizer"):
    pipeline.make_iterator(source, stage="end_to_end", layout=pipeline.CONVERSATION_WITH_DIT, batch_size=4, seed=0,
                           seq_len=SEQ_LEN, plan_tokens=plan_tokens)
  with pytest.raises(ValueError, match="pass codebook_size="):
    pipeline.make_iterator([source[0]], stage="dit_stage1", layout=pipeline.DIT_EXAMPLES, batch_size=1, seed=0,
                           shapes=SHAPES)
  broken = [dict(source[i]) for i in range(2)]
  broken[1]["codes_s2"] = broken[1]["codes_s2"] + CODEBOOK
  with pytest.raises(ValueError, match=r"record 1: codes_s2\[0, 0\] = \d+ is outside the codebook"):
    _take(pipeline.make_iterator(broken, stage="dit_stage1", layout=pipeline.DIT_EXAMPLES, batch_size=2, seed=0,
                                 shapes=SHAPES, codebook_size=CODEBOOK, num_threads=0, prefetch=0), 1)


def test_batch_spec_shapes():
  spec = pipeline.batch_spec(pipeline.CONVERSATION_WITH_DIT, 8, 2048, SHAPES)
  assert spec["token_ids"] == ((8, 2048), np.dtype(np.int32))
  assert spec["semantic_index"] == ((8, 2 * 81), np.dtype(np.int32))
  assert spec["latents"] == ((8, 4, 8, 8, 8), np.dtype(np.float32))
  packed = pipeline.batch_spec(pipeline.PACKED_CONVERSATIONS, 8, 2048, SHAPES)
  assert "codes_s2" not in spec and "semantic_index" not in packed
  assert pipeline.batch_spec(pipeline.DIT_EXAMPLES, 2, None, SHAPES)["codes_s2"] == ((2, 3, 81),
                                                                                    np.dtype(np.int32))
  with pytest.raises(ValueError, match="seq_len must be a positive int, got None"):
    pipeline.batch_spec(pipeline.PACKED_CONVERSATIONS, 8, None, SHAPES)
