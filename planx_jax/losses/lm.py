"""The planner's cross-entropy (Plan-X Eq. 2): masked mean next-token NLL, naive and sequence-chunked.
Pure functions of arrays; building the conversation and its `loss_mask` and the train step live elsewhere.

Softmax statistics are fp32. `chunked_masked_nll` never holds [B, L, V] logits: it scans over sequence
chunks (optionally vocabulary tiles too) under `jax.checkpoint`, so forward and backward hold one chunk.

Target ids must lie in [0, V) wherever the mask counts them. Values cannot be checked under `jit`, so a
counted out-of-range id makes the loss NaN there (loudly); with concrete numpy inputs it raises ValueError.
Uncounted positions may hold any id (e.g. -100 padding).
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import describe, require_count_mask, require_size

HEAD_LAYOUTS = ("hv", "vh")  # "hv": an lm_head kernel [H, V]; "vh": a tied embedding table [V, H]


class LossOutput(NamedTuple):
  """Masked mean NLL and the two sums it is made of.

  To combine microbatches or devices, add `nll_sum` and `num_tokens` across them, then divide.
  """

  loss: jax.Array  # [] fp32: nll_sum / max(num_tokens, 1); 0 when nothing is counted
  nll_sum: jax.Array  # [] fp32: sum of -log p(target) over counted positions
  num_tokens: jax.Array  # [] int32: number of counted positions


def next_token_targets(token_ids, loss_mask) -> tuple[jax.Array, jax.Array]:
  """Shift a token grid into next-token targets.

  Position t predicts token t+1: targets[:, t] = token_ids[:, t+1] and target_mask[:, t] = loss_mask[:, t+1],
  where `loss_mask` marks the tokens that are targets (the assistant's code tokens). The last position has
  no next token: its target is 0 and it is never counted. loss_mask[:, 0] is unused (nothing predicts it).

  Args:
    token_ids: [B, L] integer token ids.
    loss_mask: [B, L] bool or integer; nonzero marks a target token.

  Returns:
    targets [B, L] (token_ids' dtype) and target_mask [B, L] bool.
  """
  _check_grid("token_ids", token_ids)
  require_count_mask("loss_mask", loss_mask, tuple(token_ids.shape))
  token_ids, loss_mask = jnp.asarray(token_ids), jnp.asarray(loss_mask) != 0
  targets = jnp.concatenate([token_ids[:, 1:], jnp.zeros_like(token_ids[:, :1])], axis=1)  # [B, L]
  target_mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)  # [B, L]
  return targets, target_mask


def masked_nll(logits, targets, mask) -> LossOutput:
  """Masked mean NLL from full logits (the reference `chunked_masked_nll` is tested against).

  Args:
    logits: [B, L, V] float, any dtype; upcast to fp32 before the log-softmax.
    targets: [B, L] integer ids in [0, V) at counted positions.
    mask: [B, L] bool or integer; nonzero positions are counted.
  """
  if getattr(logits, "ndim", None) != 3 or not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be a float [B, L, V] array, got {describe(logits)}")
  b, l, vocab = logits.shape
  _check_targets(targets, mask, (b, l), vocab)
  targets, mask = jnp.asarray(targets), jnp.asarray(mask) != 0
  safe = _safe_targets(targets, mask, vocab)
  logits = jnp.asarray(logits).astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
  target_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]  # [B, L]
  return _reduce(lse - target_logit, targets, mask, vocab)


def chunked_masked_nll(hidden, head, targets, mask, *, head_layout: str = "hv", chunk_size: int = 512,
                       vocab_chunk_size: int | None = None) -> LossOutput:
  """`masked_nll(hidden @ head, targets, mask)` without materialising the [B, L, V] logits.

  The sequence is padded to a multiple of `chunk_size` and scanned chunk by chunk; each chunk's fp32 logits
  [B, chunk, V] (from `hidden` and `head` in the compute dtype, fp32 accumulation) give its log-sum-exp and
  target logit, under `jax.checkpoint`, so the backward pass recomputes them instead of storing them. With
  `vocab_chunk_size`, each chunk's log-sum-exp is also accumulated online over vocabulary tiles, holding
  [B, chunk, vocab_chunk_size] logits at a time.

  Args:
    hidden: [B, L, H] final hidden states; their dtype is the compute dtype.
    head: the output projection, [H, V] for head_layout="hv" (an untied lm_head kernel) or [V, H] for
      "vh" (a tied embedding table). Cast to `hidden`'s dtype, as `Planner.logits` does.
    targets: [B, L] integer ids in [0, V) at counted positions.
    mask: [B, L] bool or integer; nonzero positions are counted.
    head_layout: "hv" or "vh".
    chunk_size: sequence positions per chunk (clamped to L).
    vocab_chunk_size: vocabulary columns per tile, or None for the whole vocabulary per chunk.
  """
  vocab = check_hidden_and_head(hidden, head, head_layout)
  b, l, h = hidden.shape
  require_size("chunk_size", chunk_size)
  if vocab_chunk_size is not None:
    require_size("vocab_chunk_size", vocab_chunk_size)
  if l < 1:
    raise ValueError(f"hidden has an empty sequence axis: {tuple(hidden.shape)}")
  _check_targets(targets, mask, (b, l), vocab)

  targets, mask = jnp.asarray(targets), jnp.asarray(mask) != 0
  hidden = jnp.asarray(hidden)
  head = jnp.asarray(head).astype(hidden.dtype)
  chunk = min(chunk_size, l)
  num_chunks = math.ceil(l / chunk)
  pad = num_chunks * chunk - l
  safe = jnp.pad(_safe_targets(targets, mask, vocab), ((0, 0), (0, pad)))  # [B, Lp]
  hidden_chunks = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, num_chunks, chunk, h)
  hidden_chunks = jnp.swapaxes(hidden_chunks, 0, 1)  # [C, B, chunk, H]
  target_chunks = jnp.swapaxes(safe.reshape(b, num_chunks, chunk), 0, 1)  # [C, B, chunk]

  tile = vocab if vocab_chunk_size is None else min(vocab_chunk_size, vocab)
  chunk_stats = _chunk_stats if tile == vocab else functools.partial(_tiled_chunk_stats, tile=tile)

  # Inside a scan, CSE cannot merge the recomputation with the forward, so prevent_cse is not needed.
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_nll(hidden_c, head, targets_c):
    lse, target_logit = chunk_stats(hidden_c, head, targets_c, head_layout)
    return lse - target_logit  # [B, chunk]

  def step(carry, xs):
    return carry, chunk_nll(xs[0], head, xs[1])

  _, nll = jax.lax.scan(step, None, (hidden_chunks, target_chunks))  # [C, B, chunk]
  nll = jnp.swapaxes(nll, 0, 1).reshape(b, num_chunks * chunk)[:, :l]  # [B, L]
  return _reduce(nll, targets, mask, vocab)


def check_hidden_and_head(hidden, head, head_layout: str) -> int:
  """Checks final hidden states [B, L, H] against an output projection in `head_layout`; returns the vocabulary
  size V (shared by the chunked NLL and the RL chunked log-probs)."""
  if getattr(hidden, "ndim", None) != 3 or not jnp.issubdtype(hidden.dtype, jnp.floating):
    raise ValueError(f"hidden must be a float [B, L, H] array, got {describe(hidden)}")
  if head_layout not in HEAD_LAYOUTS:
    raise ValueError(f"head_layout must be one of {HEAD_LAYOUTS}, got {head_layout!r}")
  if getattr(head, "ndim", None) != 2 or not jnp.issubdtype(head.dtype, jnp.floating):
    raise ValueError(f"head must be a float 2-D array, got {describe(head)}")
  h = hidden.shape[-1]
  vocab_axis = 1 if head_layout == "hv" else 0
  if head.shape[1 - vocab_axis] != h:
    expected = "[H, V]" if head_layout == "hv" else "[V, H]"
    raise ValueError(f"head {tuple(head.shape)} does not match hidden size H={h} for head_layout="
                     f"{head_layout!r} (expected {expected})")
  return head.shape[vocab_axis]


def project_logits(hidden_c, head, head_layout):
  """Logits [B, chunk, V] fp32 of hidden [B, chunk, H] through the head (`head_layout` "hv": [H, V], "vh": [V, H])."""
  spec = "bch,hv->bcv" if head_layout == "hv" else "bch,vh->bcv"
  return jnp.einsum(spec, hidden_c, head, preferred_element_type=jnp.float32)  # [B, chunk, V or tile]


def _chunk_stats(hidden_c, head, targets_c, head_layout):
  """Log-sum-exp and target logit [B, chunk] from the chunk's full-vocabulary logits."""
  logits = project_logits(hidden_c, head, head_layout)  # [B, chunk, V]
  target_logit = jnp.take_along_axis(logits, targets_c[..., None], axis=-1)[..., 0]  # [B, chunk]
  return jax.nn.logsumexp(logits, axis=-1), target_logit


def _tiled_chunk_stats(hidden_c, head, targets_c, head_layout, tile):
  """Log-sum-exp and target logit [B, chunk], accumulated online over vocabulary tiles of width `tile`.

  Tile k covers columns [k * tile, (k + 1) * tile). The last tile is read from V - tile so every slice is
  in bounds; columns it shares with the previous tile are masked out. The running max only rescales and
  carries no gradient, so the gradient is exactly the softmax.
  """
  vocab_axis = 1 if head_layout == "hv" else 0
  vocab = head.shape[vocab_axis]
  columns = jnp.arange(tile, dtype=jnp.int32)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def tile_step(carry, k):
    running_max, running_sum, target_logit = carry  # [B, chunk] each
    nominal = k * tile
    start = jnp.minimum(nominal, vocab - tile)
    head_tile = jax.lax.dynamic_slice_in_dim(head, start, tile, axis=vocab_axis)
    logits = project_logits(hidden_c, head_tile, head_layout)  # [B, chunk, tile]
    logits = jnp.where(start + columns >= nominal, logits, -jnp.inf)
    new_max = jnp.maximum(running_max, jax.lax.stop_gradient(jnp.max(logits, axis=-1)))
    running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
        jnp.exp(logits - new_max[..., None]), axis=-1)
    local = targets_c - start
    in_tile = (targets_c >= nominal) & (local < tile)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, tile - 1)[..., None], axis=-1)[..., 0]
    target_logit = target_logit + jnp.where(in_tile, picked, 0.0)
    return (new_max, running_sum, target_logit), None

  shape = targets_c.shape
  init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
  num_tiles = math.ceil(vocab / tile)
  (running_max, running_sum, target_logit), _ = jax.lax.scan(
      tile_step, init, jnp.arange(num_tiles, dtype=jnp.int32))
  return running_max + jnp.log(running_sum), target_logit


def _safe_targets(targets, mask, vocab):
  """Targets with every uncounted or out-of-range id replaced by 0, so gathers stay in bounds."""
  valid = (targets >= 0) & (targets < vocab)
  return jnp.where(mask & valid, targets, 0).astype(jnp.int32)


def _reduce(nll, targets, mask, vocab) -> LossOutput:
  """Sum the per-position NLL [B, L] over counted positions; NaN where a counted id is out of range."""
  valid = (targets >= 0) & (targets < vocab)
  nll = jnp.where(valid, nll, jnp.nan)
  nll_sum = jnp.sum(jnp.where(mask, nll, 0.0), dtype=jnp.float32)
  num_tokens = jnp.sum(mask, dtype=jnp.int32)
  loss = nll_sum / jnp.maximum(num_tokens, 1).astype(jnp.float32)
  return LossOutput(loss, nll_sum, num_tokens)


def _check_grid(name, x, shape=None):
  if getattr(x, "ndim", None) != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer [B, L] array, got {describe(x)}")
  if shape is not None and tuple(x.shape) != shape:
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def _check_targets(targets, mask, shape, vocab):
  """Shapes and dtypes always; the id range too when both are concrete numpy arrays (a cheap host check)."""
  _check_grid("targets", targets, shape)
  require_count_mask("mask", mask, shape)
  if isinstance(targets, np.ndarray) and isinstance(mask, np.ndarray):
    bad = (mask != 0) & ((targets < 0) | (targets >= vocab))
    if bad.any():
      b, t = (int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"targets[{b}, {t}] = {int(targets[b, t])} is counted by the mask but outside the "
                       f"vocabulary [0, {vocab})")
