"""Grain pipelines from Plan-X records to one process's rows of a training stage's global batch, in one of three
batch layouts.

Shuffles by seed, repeats over epochs, splits every global batch across processes, packs planner conversations
and checkpoints its position; it does not put arrays on devices, and it does not read files itself (see tfds_builder).
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import grain
import numpy as np

from planx_jax.data.conversation import build_plan_conversation
from planx_jax.data.records import PLAN_FRAME_CODES, RecordShapes, check_codebook_size, check_record
from planx_jax.data.tokenizer import check_tokenizer_layout
from planx_jax.plan_tokens import PlanTokens

# Batch layouts (a task names its own, `Task.batch_layout`): planner conversations packed into rows of L tokens;
# DiT inputs only; one conversation per row with the DiT inputs and the planned codes' positions.
PACKED_CONVERSATIONS = "packed_conversations"
DIT_EXAMPLES = "dit_examples"
CONVERSATION_WITH_DIT = "conversation_with_dit"
LAYOUTS = (PACKED_CONVERSATIONS, DIT_EXAMPLES, CONVERSATION_WITH_DIT)
CONVERSATION_LAYOUTS = (PACKED_CONVERSATIONS, CONVERSATION_WITH_DIT)  # rows of L tokens: need a tokenizer
PLANNER_FIELDS = ("token_ids", "positions", "segment_ids", "loss_mask", "first_frame_mask", "first_frame_given")
DIT_FIELDS = ("latents", "text_emb", "codes_s2", "has_first_frame")
_CONVERSATION_FIELDS = ("token_ids", "loss_mask", "first_frame_mask", "first_frame_given")


def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def _check_layout(layout) -> str:
  if layout not in LAYOUTS:
    raise ValueError(f"unknown batch layout {layout!r}; layouts are {', '.join(LAYOUTS)}")
  return layout


def batch_spec(layout: str, batch_size: int, seq_len: int | None, shapes: RecordShapes
               ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of every field of a global batch [B, ...] of the layout, without reading data.

  `seq_len` (L) is required by the conversation layouts and ignored by `dit_examples`.
  """
  _check_layout(layout)
  b = _positive_int("batch_size", batch_size)
  if not isinstance(shapes, RecordShapes):
    raise ValueError(f"shapes must be a RecordShapes, got {type(shapes).__name__}")
  records = shapes.array_specs()
  dit = {name: ((b,) + records[name][0], records[name][1]) for name in DIT_FIELDS}
  if layout == DIT_EXAMPLES:
    return dit
  length = _positive_int("seq_len", seq_len)
  i32, bool_ = np.dtype(np.int32), np.dtype(np.bool_)
  planner = {name: ((b, length), i32 if name in ("token_ids", "positions", "segment_ids") else bool_)
             for name in PLANNER_FIELDS}
  if layout == PACKED_CONVERSATIONS:
    return planner
  planned = (shapes.num_keyframes - 1) * PLAN_FRAME_CODES
  return {**planner, **{name: dit[name] for name in ("latents", "text_emb", "has_first_frame")},
          "semantic_index": ((b, planned), i32), "semantic_mask": ((b, planned), bool_)}


class _ConversationFields:
  """Record -> the planner conversation's [n] arrays (token ids and masks), Figure 6 of Plan-X."""

  def __init__(self, tokenizer, plan_tokens: PlanTokens):
    self._tokenizer, self._plan_tokens = tokenizer, plan_tokens
    self._lock = threading.Lock()  # one tokenizer shared by grain's reader threads

  def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    has_first_frame = bool(record["has_first_frame"])
    with self._lock:
      conv = build_plan_conversation(
          self._tokenizer, self._plan_tokens, record["image_description"], record["video_prompt"],
          num_frames=record["codes_s2"].shape[0],
          first_frame_codes=record["codes_s0"] if has_first_frame else None,
          plan_codes=record["codes_s2"][1:])
    return {"token_ids": conv.token_ids, "loss_mask": conv.loss_mask, "first_frame_mask": conv.first_frame_mask,
            "first_frame_given": conv.first_frame_mask & has_first_frame}


def _empty_rows(rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  out = {name: np.zeros((rows, seq_len), np.int32) for name in ("positions", "segment_ids")}
  out["token_ids"] = np.full((rows, seq_len), pad_id, np.int32)
  out.update({name: np.zeros((rows, seq_len), bool) for name in ("loss_mask", "first_frame_mask", "first_frame_given")})
  return {name: out[name] for name in PLANNER_FIELDS}


def _check_fits(length: int, seq_len: int) -> None:
  if length > seq_len:
    raise ValueError(f"a planner conversation has {length} tokens, more than seq_len={seq_len}; raise seq_len")


def _place(rows: dict[str, np.ndarray], row: int, start: int, segment_id: int, conv: dict[str, np.ndarray]) -> int:
  """Writes one conversation into rows[row, start:start + n] as segment `segment_id`; returns n."""
  n = conv["token_ids"].shape[0]
  span = slice(start, start + n)
  for name in _CONVERSATION_FIELDS:
    rows[name][row, span] = conv[name]
  rows["segment_ids"][row, span] = segment_id
  rows["positions"][row, span] = np.arange(n, dtype=np.int32)
  return n


class _EndToEndRow:
  """Record -> one end-to-end row: its conversation right-padded to L, semantic indices, DiT inputs."""

  def __init__(self, conversations: _ConversationFields, seq_len: int, pad_id: int):
    self._conversations, self._seq_len, self._pad_id = conversations, seq_len, pad_id

  def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    conv = self._conversations(record)
    _check_fits(conv["token_ids"].shape[0], self._seq_len)
    rows = _empty_rows(1, self._seq_len, self._pad_id)
    _place(rows, 0, 0, 1, conv)
    out = {name: value[0] for name, value in rows.items()}
    # The planner's hidden state at each planned code token feeds the DiT's semantic branch.
    out["semantic_index"] = np.flatnonzero(conv["loss_mask"]).astype(np.int32)  # [(K-1) * 81]
    out["semantic_mask"] = np.ones(out["semantic_index"].shape, bool)
    out.update({name: record[name] for name in ("latents", "text_emb", "has_first_frame")})
    return out


class _ProcessRowsMapDataset(grain.MapDataset):
  """This process's rows of each global batch: local element s * b + q is global element s * B + p * b + q."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._global_rows = batch_size
    self._rows = batch_size // process_count
    self._first_row = process_index * self._rows

  def __len__(self) -> int:
    return len(self._parent) // self._global_rows * self._rows

  def __str__(self) -> str:
    return f"ProcessRowsMapDataset(rows {self._first_row}..{self._first_row + self._rows - 1} of {self._global_rows})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self._rows)
    return self._parent[step * self._global_rows + self._first_row + row]


class _PackedRowsIterator(grain.DatasetIterator):
  """Packs row q's conversation stream (local elements q, q + b, q + 2b, ...) greedily, in order, into rows of L.

  A row takes the stream's next conversations while they fit; segment ids count 1..n within the row
  and positions restart at 0 per conversation; padding has segment 0, position 0 and the pad id.
  State: the index in each stream of the first conversation of the next row. With reader threads,
  each stream reads `read_ahead` conversations ahead; what was read ahead is not state.
  """

  def __init__(self, conversations: grain.MapDataset, rows: int, seq_len: int, pad_id: int, num_threads: int,
               read_ahead: int):
    super().__init__()
    self._conversations, self._rows, self._seq_len, self._pad_id = conversations, rows, seq_len, pad_id
    self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="planx-packing") if num_threads else None
    self._read_ahead = read_ahead if num_threads else 0
    self._next = [0] * rows
    self._reads: dict[tuple[int, int], Future] = {}  # (row, stream index) -> conversation, read or being read

  def _read(self, row: int, index: int) -> Future:
    element = index * self._rows + row
    if self._pool is not None:
      return self._pool.submit(self._conversations.__getitem__, element)
    future = Future()
    future.set_result(self._conversations[element])
    return future

  def _conversation(self, row: int, index: int) -> dict[str, np.ndarray]:
    for ahead in range(index, index + 1 + self._read_ahead):
      if (row, ahead) not in self._reads:
        self._reads[(row, ahead)] = self._read(row, ahead)
    return self._reads[(row, index)].result()

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    out = _empty_rows(self._rows, self._seq_len, self._pad_id)
    for row in range(self._rows):
      start, segment_id = 0, 1
      while True:
        conv = self._conversation(row, self._next[row])
        length = conv["token_ids"].shape[0]
        _check_fits(length, self._seq_len)
        if start + length > self._seq_len:
          break
        start += _place(out, row, start, segment_id, conv)
        del self._reads[(row, self._next[row])]
        segment_id += 1
        self._next[row] += 1
    return out

  def get_state(self) -> dict[str, Any]:
    return {"next_conversation": list(self._next)}

  def set_state(self, state: dict[str, Any]) -> None:
    indices = state.get("next_conversation") if isinstance(state, dict) else None
    if (not isinstance(indices, list) or len(indices) != self._rows
        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices)):
      raise ValueError(f"packing state must hold next_conversation: {self._rows} non-negative ints, got {state!r}")
    for future in self._reads.values():
      future.cancel()
    self._reads.clear()
    self._next = list(indices)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
    self._reads.clear()
    super().close()


class _PackedRowsIterDataset(grain.IterDataset):

  def __init__(self, conversations: grain.MapDataset, rows: int, seq_len: int, pad_id: int, num_threads: int,
               read_ahead: int):
    super().__init__(conversations)
    self._rows, self._seq_len, self._pad_id = rows, seq_len, pad_id
    self._num_threads, self._read_ahead = num_threads, read_ahead

  def __str__(self) -> str:
    return f"PackedRowsIterDataset(rows={self._rows}, seq_len={self._seq_len})"

  def __iter__(self) -> _PackedRowsIterator:
    return _PackedRowsIterator(self._parent, self._rows, self._seq_len, self._pad_id, self._num_threads,
                               self._read_ahead)


class _PipelineIterator(grain.DatasetIterator):
  """Yields the parent's batches; its state names the pipeline so a mismatched restore is an error."""

  def __init__(self, parent: grain.DatasetIterator, identity: dict[str, Any]):
    super().__init__(parent)
    self._identity = identity

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": dict(self._identity), "position": self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or set(state) != {"pipeline", "position"}:
      raise ValueError(f"a data iterator state has keys 'pipeline' and 'position', got {state!r}")
    saved = state["pipeline"]
    if saved != self._identity:
      diff = {k: (saved.get(k), self._identity.get(k)) for k in sorted(set(saved) | set(self._identity))
              if saved.get(k) != self._identity.get(k)}
      raise ValueError(f"data iterator state is from another pipeline: (saved, this) differ in {diff}")
    self._parent.set_state(state["position"])


class _PipelineIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, identity: dict[str, Any]):
    super().__init__(parent)
    self._identity = identity

  def __str__(self) -> str:
    return f"PipelineIterDataset({self._identity})"

  def __iter__(self) -> _PipelineIterator:
    return _PipelineIterator(self._parent.__iter__(), self._identity)


def _resolve_schema(source, shapes, codebook_size, plan_tokens) -> tuple[RecordShapes, int]:
  source_shapes = getattr(source, "shapes", None)
  shapes = source_shapes if shapes is None else shapes
  if not isinstance(shapes, RecordShapes):
    raise ValueError(f"pass shapes= (a RecordShapes) for a source without .shapes, got {shapes!r}")
  if source_shapes is not None and source_shapes != shapes:
    raise ValueError(f"the source's shapes {source_shapes} differ from shapes={shapes}")
  sizes = {name: check_codebook_size(value) for name, value in (
      ("codebook_size", codebook_size), ("plan_tokens.codebook_size", getattr(plan_tokens, "codebook_size", None)),
      ("source.codebook_size", getattr(source, "codebook_size", None))) if value is not None}
  if not sizes:
    raise ValueError("pass codebook_size= (or plan_tokens=, or a source with .codebook_size)")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"codebook sizes disagree: {sizes}")
  return shapes, next(iter(sizes.values()))


def make_dataset(
    source,
    *,
    stage: str,
    layout: str,
    batch_size: int,
    seed: int,
    seq_len: int | None = None,
    tokenizer=None,
    plan_tokens: PlanTokens | None = None,
    shapes: RecordShapes | None = None,
    codebook_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 2,
) -> grain.IterDataset:
  """The grain dataset of this process's batches of a layout (infinite: it repeats over epochs).

  Each epoch visits the records in a fresh order drawn from `seed`. Global batch s holds the
  global elements s * B .. s * B + B - 1 of that order (packed conversations: row r packs elements r, r + B,
  r + 2B, ... in order); this process yields its rows p * b .. p * b + b - 1 (b = B / process_count),
  so processes read disjoint records and the global batch does not depend on the process count.
  Fields and dtypes are those of `batch_spec` with b rows.

  Args:
    source: random-access records (`len`, `[i]`), e.g. `SyntheticSource` or `load_dataset(...)`.
    stage: the training stage the batches feed (it names the pipeline in its checkpointed state).
    layout: one of LAYOUTS (the stage's `Task.batch_layout`).
    batch_size: global batch B, divisible by process_count.
    seed: shuffle seed in [0, 2**32).
    seq_len: row length L of the conversation layouts (ignored by `dit_examples`).
    tokenizer, plan_tokens: the planner's tokenizer and id layout (conversation layouts).
    shapes, codebook_size: the record schema; default to the source's `.shapes` / `.codebook_size`
      and `plan_tokens.codebook_size`; every record is checked against it.
    process_index, process_count: this process among the data-loading processes.
    num_threads, prefetch: reader threads, and batches read ahead (packed conversations: conversations
      read ahead per row); 0 reads on demand.
  """
  _check_layout(layout)
  batch_size = _positive_int("batch_size", batch_size)
  process_count = _positive_int("process_count", process_count)
  if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)) or not (
      0 <= process_index < process_count):
    raise ValueError(f"process_index must be an int in [0, {process_count}), got {process_index!r}")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  for name, value in (("num_threads", num_threads), ("prefetch", prefetch)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be a non-negative int, got {value!r}")
  if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
    raise ValueError(f"source must be random-access (len and [i]), got {type(source).__name__}")
  num_records = len(source)
  if num_records < 1:
    raise ValueError("source has no records")
  shapes, codebook_size = _resolve_schema(source, shapes, codebook_size, plan_tokens)
  if layout == DIT_EXAMPLES:
    seq_len = None
  else:
    seq_len = _positive_int("seq_len", seq_len)
    if not isinstance(plan_tokens, PlanTokens):
      raise ValueError(f"stage {stage!r} needs plan_tokens (a PlanTokens), got {plan_tokens!r}")
    if tokenizer is None:
      raise ValueError(f"stage {stage!r} needs the planner's tokenizer")
    check_tokenizer_layout(tokenizer, plan_tokens)
  rows = batch_size // process_count
  identity = {"stage": stage, "seed": int(seed), "batch_size": batch_size, "seq_len": seq_len,
              "process_index": int(process_index), "process_count": process_count, "num_records": num_records}

  def checked(index: int, record):
    return check_record(record, shapes, codebook_size, index=index % num_records)

  # grain reshuffles epoch e with seed + e; mixing the seed first keeps nearby seeds' epochs unrelated.
  shuffle_seed = int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])
  records = grain.MapDataset.source(source).map_with_index(checked).shuffle(seed=shuffle_seed).repeat()
  local = _ProcessRowsMapDataset(records, batch_size, int(process_index), process_count)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  if layout == DIT_EXAMPLES:
    dit_rows = local.map(lambda record: {name: record[name] for name in DIT_FIELDS})
    batches = dit_rows.batch(rows, drop_remainder=True).to_iter_dataset(read_options)
  elif layout == CONVERSATION_WITH_DIT:
    row = _EndToEndRow(_ConversationFields(tokenizer, plan_tokens), seq_len, plan_tokens.endoftext)
    batches = local.map(row).batch(rows, drop_remainder=True).to_iter_dataset(read_options)
  else:
    conversations = local.map(_ConversationFields(tokenizer, plan_tokens))
    batches = _PackedRowsIterDataset(conversations, rows, seq_len, plan_tokens.endoftext, num_threads, prefetch)
  return _PipelineIterDataset(batches, identity)


def make_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(make_dataset(source, **kwargs))`: a checkpointable iterator of this process's batches.

  `get_state()` is a JSON-ready dict; `set_state(state)` on a fresh iterator of the same pipeline
  resumes at the next batch (a state from another stage, seed, batch size or process is an error).
  """
  return iter(make_dataset(source, **kwargs))
