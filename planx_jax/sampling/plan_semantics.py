"""End-to-end semantic tokens at inference: the planner's final hidden states at the code tokens of a sampled
plan, read back through the whole conversation exactly as end-to-end training reads them.

Not the plan sampler (planner_decode) and not the DiT; the training side is `train/tasks/end_to_end.py`.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.data.conversation import PlanConversation
from planx_jax.models.planner import Planner
from planx_jax.models.planner_config import PlannerConfig


def plan_semantic_batch(conversations: Sequence[PlanConversation], pad_id: int) -> dict[str, np.ndarray]:
  """Conversations that include their plans -> right-padded planner inputs and the planned code positions.

  Returns token_ids / positions / segment_ids / zero_embed_mask [B, L] and semantic_index [B, S] (the loss-mask
  positions: every planned code token, S = (F-1) * 81, equal for all rows).
  """
  if not conversations:
    raise ValueError("no conversations")
  index = [np.flatnonzero(c.loss_mask) for c in conversations]
  if len({len(i) for i in index}) != 1 or not len(index[0]):
    raise ValueError(f"every conversation must hold a plan of the same length, got code counts "
                     f"{sorted({len(i) for i in index})}")
  length = max(len(c) for c in conversations)
  b = len(conversations)
  token_ids = np.full((b, length), pad_id, np.int32)
  segment_ids = np.zeros((b, length), np.int32)
  positions = np.zeros((b, length), np.int32)
  zero = np.zeros((b, length), bool)
  for row, conv in enumerate(conversations):
    n = len(conv)
    token_ids[row, :n] = conv.token_ids
    segment_ids[row, :n] = 1
    positions[row, :n] = np.arange(n)
    zero[row, :n] = conv.first_frame_mask & (not conv.has_first_frame)  # T2V slots are zeroed, as in training
  return {"token_ids": token_ids, "positions": positions, "segment_ids": segment_ids, "zero_embed_mask": zero,
          "semantic_index": np.stack(index).astype(np.int32)}


def plan_semantics(config: PlannerConfig, params, conversations: Sequence[PlanConversation], pad_id: int
                   ) -> jax.Array:
  """[B, (F-1) * 81, hidden] fp32: the end-to-end DiT's semantic input for each conversation's plan."""
  batch = plan_semantic_batch(conversations, pad_id)
  return _hidden_at(config, params, batch["token_ids"], batch["positions"], batch["segment_ids"],
                    batch["zero_embed_mask"], batch["semantic_index"])


@functools.partial(jax.jit, static_argnums=0)
def _hidden_at(config, params, token_ids, positions, segment_ids, zero, index):
  hidden = Planner(config).apply({"params": params}, token_ids, positions, segment_ids, zero,
                                 method="hidden_states")  # [B, L, H]
  return jnp.take_along_axis(hidden, index[..., None], axis=1).astype(jnp.float32)  # [B, S, H]
