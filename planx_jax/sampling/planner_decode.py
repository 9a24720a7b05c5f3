"""Planner decoding with a KV cache: free text (`generate`) and grammar-constrained plans (`sample_plans`).

Prefill + `lax.while_loop` decode in one jitted program; not a serving engine (no paged cache, no continuous batching).
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.models.planner import Planner, init_cache
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.plan_tokens import PlanTokens
from planx_jax.sampling.logits_processing import SamplingConfig, sample_token
from planx_jax.sampling.plan_grammar import CODES_PER_KEYFRAME, KEYFRAME_LEN, PlanGrammar

# Written after a row's stop token (and in rows' unused tail): never a token id, so it cannot pass
# for a sampled token. Slice rows with `lengths` before feeding them back to the model.
PAD_ID = -1
# Qwen2.5's `<|im_end|>`, the planner's end of turn.
DEFAULT_STOP = PlanTokens().chat_im_end


class PaddedPrompts(NamedTuple):
  """Left-padded prompts: each row ends at the last column and sees itself as unpadded."""

  token_ids: np.ndarray  # [B, P] int32, 0 in padding
  segment_ids: np.ndarray  # [B, P] int32, 0 padding / 1 real
  positions: np.ndarray  # [B, P] int32, 0 in padding, 0..n-1 over the real tokens
  lengths: np.ndarray  # [B] int32 real tokens per row
  zero_embed: np.ndarray  # [B, P] bool, True where the input embedding is zeroed (T2V first frame)


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [B, N] int32; PAD_ID after the stop token
  lengths: jax.Array  # [B] int32 tokens written per row, the stop token included
  logits: jax.Array | None  # [B, N, V] fp32 model logits each token was drawn from (0 after the stop)


class PlanSamples(NamedTuple):
  tokens: jax.Array  # [B, (F-1) * 84 + 1] int32: the prefix, then the sampled rest of the plan
  codes: jax.Array  # [B, F-1, 81] int32 code indices of the keyframes


def _prompt_rows(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
  """Each prompt as int32 [n] after checking it is a non-empty 1-D sequence of ids inside the vocabulary."""
  if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
    raise ValueError("prompts must be a non-empty list of token-id sequences")
  rows = []
  for i, prompt in enumerate(prompts):
    ids = np.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"prompt {i} must be a non-empty 1-D sequence of int token ids, got {ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
      raise ValueError(f"prompt {i} holds token id {int(bad[0])} outside the vocabulary of size {vocab_size}")
    rows.append(ids.astype(np.int32))
  return rows


def _zero_embed_rows(zero_embed_masks, rows: list[np.ndarray]) -> list[np.ndarray]:
  """Per-prompt bool masks of the positions whose embeddings are zeroed (all False when None)."""
  if zero_embed_masks is None:
    return [np.zeros(len(r), bool) for r in rows]
  if len(zero_embed_masks) != len(rows):
    raise ValueError(f"got {len(zero_embed_masks)} zero_embed_masks for {len(rows)} prompts")
  masks = []
  for i, (mask, row) in enumerate(zip(zero_embed_masks, rows)):
    mask = np.asarray(mask, bool)
    if mask.shape != row.shape:
      raise ValueError(f"zero_embed_masks[{i}] has shape {mask.shape}, prompt {i} has {row.shape}")
    masks.append(mask)
  return masks


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_to: int | None = None,
                zero_embed_masks=None) -> PaddedPrompts:
  """Left-pad token-id sequences of different lengths to [B, P] (P = the longest, or `pad_to`).

  `zero_embed_masks`: optional per-prompt bool arrays marking tokens whose input
  embedding is zeroed (the first-frame codes of a T2V prompt, Plan-X Section 6.1).
  """
  rows = _prompt_rows(prompts, vocab_size)
  masks = _zero_embed_rows(zero_embed_masks, rows)
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(lengths.max()) if pad_to is None else pad_to
  if not isinstance(width, (int, np.integer)) or width < lengths.max():
    raise ValueError(f"prompt of {int(lengths.max())} tokens does not fit the padded width {pad_to!r}")
  token_ids = np.zeros((len(rows), width), np.int32)
  segment_ids = np.zeros((len(rows), width), np.int32)
  positions = np.zeros((len(rows), width), np.int32)
  zero_embed = np.zeros((len(rows), width), bool)
  for b, ids in enumerate(rows):
    token_ids[b, width - len(ids):] = ids
    zero_embed[b, width - len(ids):] = masks[b]
    segment_ids[b, width - len(ids):] = 1
    positions[b, width - len(ids):] = np.arange(len(ids))
  return PaddedPrompts(token_ids, segment_ids, positions, lengths, zero_embed)


def check_context(config: PlannerConfig, prompt_len: int, new_tokens: int) -> None:
  """The longest prompt plus the new tokens must fit the model's positions."""
  if prompt_len + new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt of {prompt_len} tokens plus {new_tokens} new tokens exceeds the context of "
                     f"{config.max_position_embeddings} (PlannerConfig.max_position_embeddings)")


def _check_model(config: PlannerConfig, params) -> None:
  rows = np.shape(params["embed"]["embedding"])[0]
  if rows != config.vocab_size:
    raise ValueError(f"params have {rows} embedding rows but PlannerConfig.vocab_size is {config.vocab_size}")


def _prefill(params, token_ids, segment_ids, positions, zero_embed, config: PlannerConfig, cache_len: int):
  """Runs the padded prompt into a fresh cache of `cache_len` slots; logits [B, V] of the last column."""
  model = Planner(config)
  cache = init_cache(config, token_ids.shape[0], cache_len)
  out = model.apply({"params": params}, token_ids, positions, segment_ids, cache=cache, compute_logits=False,
                    zero_embed_mask=zero_embed, method="forward")
  logits = model.apply({"params": params}, out.hidden[:, -1:], method="logits")  # [B, 1, V]
  return logits[:, 0], out.cache


@functools.partial(
    jax.jit,
    static_argnames=("config", "max_new_tokens", "top_k", "greedy", "use_top_p", "grammar", "return_logits"),
)
def _sample_program(params, token_ids, segment_ids, positions, zero_embed, prompt_lengths, rng, temperature, top_p,
                    stop_token, grammar_start, *, config: PlannerConfig, max_new_tokens: int, top_k: int,
                    greedy: bool, use_top_p: bool, grammar: PlanGrammar | None, return_logits: bool):
  """Prefill, then a while_loop sampling `max_new_tokens` per row (fewer when every row stops).

  One program, so the cache is allocated once (P + N slots) and updated in place by the loop.
  Temperature, top_p, the stop token (-1: none) and the grammar's start step are traced: changing them
  does not recompile.
  """
  model = Planner(config)
  b = token_ids.shape[0]
  first_logits, cache = _prefill(params, token_ids, segment_ids, positions, zero_embed, config,
                                 token_ids.shape[1] + max_new_tokens)
  allowed = None if grammar is None else grammar.code_range

  def pick(logits, i, done):
    key = jax.random.fold_in(rng, i)
    token = sample_token(key, logits, 0.0 if greedy else temperature, top_k, top_p if use_top_p else 1.0,
                         allowed)  # [B]
    if grammar is not None:
      forced = grammar.forced_token(grammar_start + i)  # scalar: every row is at the same plan step
      token = jnp.where(forced >= 0, forced, token)
    token = jnp.where(done, PAD_ID, token)
    stopped = done | (token == stop_token)  # a stop of -1 never matches a sampled id
    return token, stopped

  def record(state, i, token, logits, done_before):
    tokens, logits_buf = state
    tokens = tokens.at[:, i].set(token)
    if return_logits:
      logits_buf = logits_buf.at[:, i].set(jnp.where(done_before[:, None], 0.0, logits))
    return tokens, logits_buf

  tokens = jnp.full((b, max_new_tokens), PAD_ID, jnp.int32)
  logits_buf = jnp.zeros((b, max_new_tokens, config.vocab_size), jnp.float32) if return_logits else None
  not_done = jnp.zeros((b,), bool)
  token, done = pick(first_logits, 0, not_done)
  tokens, logits_buf = record((tokens, logits_buf), 0, token, first_logits, not_done)

  def cond(carry):
    i, _, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, tokens, logits_buf, cache, last, done = carry
    feed = jnp.where(done, 0, last)[:, None]  # [B, 1]; stopped rows feed a dummy token in segment 0
    step_positions = (prompt_lengths + i - 1)[:, None]  # [B, 1]
    step_segments = jnp.where(done, 0, 1).astype(jnp.int32)[:, None]  # [B, 1]
    out = model.apply({"params": params}, feed, step_positions, step_segments, cache=cache, method="forward")
    logits = out.logits[:, 0]  # [B, V]
    token, new_done = pick(logits, i, done)
    tokens, logits_buf = record((tokens, logits_buf), i, token, logits, done)
    return i + 1, tokens, logits_buf, out.cache, token, new_done

  carry = (jnp.ones((), jnp.int32), tokens, logits_buf, cache, token, done)
  _, tokens, logits_buf, _, _, _ = jax.lax.while_loop(cond, body, carry)
  lengths = jnp.sum(tokens != PAD_ID, axis=1).astype(jnp.int32)
  return tokens, lengths, logits_buf


def _run(config, params, padded: PaddedPrompts, rng, sampling: SamplingConfig, max_new_tokens: int,
         stop_token: int | None, return_logits: bool, grammar: PlanGrammar | None, grammar_start: int):
  """Checks shared by `generate` and `sample_plans`, then prefill + decode."""
  _check_model(config, params)
  check_context(config, int(padded.lengths.max()), max_new_tokens)
  if stop_token is not None and (not isinstance(stop_token, (int, np.integer)) or
                                 not 0 <= stop_token < config.vocab_size):
    raise ValueError(f"stop token id {stop_token} is outside the vocabulary of size {config.vocab_size}")
  if sampling.top_k > config.vocab_size:
    raise ValueError(f"top_k={sampling.top_k} exceeds the vocabulary size {config.vocab_size}")
  return GenerateOutput(*_sample_program(
      params, jnp.asarray(padded.token_ids), jnp.asarray(padded.segment_ids), jnp.asarray(padded.positions),
      jnp.asarray(padded.zero_embed), jnp.asarray(padded.lengths), rng, jnp.float32(sampling.temperature), jnp.float32(sampling.top_p),
      jnp.int32(-1 if stop_token is None else stop_token), jnp.int32(grammar_start), config=config,
      max_new_tokens=max_new_tokens, top_k=sampling.top_k, greedy=sampling.greedy, use_top_p=sampling.top_p < 1.0,
      grammar=grammar, return_logits=return_logits))


def generate(config: PlannerConfig, params, prompts: Sequence[Sequence[int]], rng: jax.Array,
             sampling: SamplingConfig = SamplingConfig(), stop_token: int | None = DEFAULT_STOP,
             return_logits: bool = False, prompt_length: int | None = None) -> GenerateOutput:
  """Samples up to `sampling.max_new_tokens` tokens after each prompt.

  Args:
    config, params: the planner.
    prompts: B token-id sequences, any lengths; they are left-padded to one batch.
    rng: a PRNG key; step i draws with `fold_in(rng, i)`.
    sampling: temperature / top-k / top-p and the number of new tokens N.
    stop_token: a row stops after writing it (default Qwen's `<|im_end|>`); None never stops early.
    return_logits: also return each step's model logits [B, N, V] (memory: B * N * V floats).
    prompt_length: left-pad prompts to this width instead of the longest prompt, so batches of
      varying prompt lengths reuse one compiled program.

  Returns:
    `GenerateOutput`: tokens [B, N] with `PAD_ID` (-1) after a row's stop token, lengths [B] (the
    stop token included), logits or None. The loop exits as soon as every row has stopped.
  """
  padded = pad_prompts(prompts, config.vocab_size, prompt_length)
  return _run(config, params, padded, rng, sampling, sampling.max_new_tokens, stop_token, return_logits,
              grammar=None, grammar_start=0)


def _prefix_rows(prefix, batch: int) -> np.ndarray:
  """A prefix shared by all rows ([T]) or given per row ([B, T], equal lengths) -> int32 [B, T]."""
  try:
    rows = np.asarray(prefix)
  except ValueError as err:
    raise ValueError(f"prefix must be int token ids [T] or [B, T] with equal-length rows: {err}") from None
  if rows.ndim == 1:
    rows = np.broadcast_to(rows, (batch, rows.shape[0]))
  if rows.ndim != 2 or rows.shape[0] != batch or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
    raise ValueError(f"prefix must be int token ids [T] or [B={batch}, T] with equal-length rows, got "
                     f"{rows.dtype} {rows.shape}")
  return rows.astype(np.int32)


def sample_plans(config: PlannerConfig, params, plan_tokens: PlanTokens, prompts: Sequence[Sequence[int]],
                 num_frames: int, rng: jax.Array, sampling: SamplingConfig = SamplingConfig(), prefix=None,
                 prompt_length: int | None = None, zero_embed_masks=None) -> PlanSamples:
  """Samples one plan of F-1 keyframes per prompt under the plan grammar (Plan-X: temperature 0.9).

  Structural tokens (`<im_start>`, `<S2>`, `<im_end>`, the final `<|im_end|>`) are forced; each of
  the 81 codes per keyframe is drawn among the code ids only, so every sample is a well-formed plan.
  The plan length is fixed by `num_frames`; `sampling.max_new_tokens` is not used.

  Args:
    prompts: B token-id sequences (the conversation up to the assistant turn).
    num_frames: F, the video's keyframes including the first (prompt) frame; F >= 2.
    prefix: a partial plan to continue (video continuation): [T] shared by all rows or [B, T]; it
      must follow the grammar and leave at least the end-of-turn token to sample. It is fed after
      the prompt, sampling resumes at grammar step T, and the output starts with it unchanged.
    prompt_length: left-pad prompt + prefix to this width (see `generate`).
    zero_embed_masks: per-prompt bool arrays (prompt length) marking tokens whose
      embeddings are zeroed: the first-frame codes of a T2V prompt
      (`PlanConversation.first_frame_mask`).

  Returns:
    `PlanSamples`: tokens [B, (F-1) * 84 + 1] and codes [B, F-1, 81].
  """
  grammar = PlanGrammar(plan_tokens, num_frames)
  if plan_tokens.vocab_size > config.vocab_size:
    raise ValueError(f"plan tokens need {plan_tokens.vocab_size} vocabulary rows; the planner has "
                     f"{config.vocab_size}")
  prompt_rows = _prompt_rows(prompts, config.vocab_size)
  batch = len(prompt_rows)
  prefix_rows = _prefix_rows([] if prefix is None else prefix, batch)
  if prefix_rows.shape[1] >= grammar.length:
    raise ValueError(f"prefix of {prefix_rows.shape[1]} tokens leaves nothing to sample: a plan of "
                     f"{grammar.num_keyframes} keyframes has {grammar.length} tokens")
  given = prefix_rows if np.ndim(prefix) == 2 else prefix_rows[0]  # a shared prefix is reported as [T]
  message = grammar.first_violation(given, partial=True)
  if message is not None:
    raise ValueError(f"prefix is not the start of a plan: {message}")
  full_prompts = [np.concatenate([p, r]) for p, r in zip(prompt_rows, prefix_rows)]
  full_masks = [np.concatenate([m, np.zeros(prefix_rows.shape[1], bool)])
                for m in _zero_embed_rows(zero_embed_masks, prompt_rows)]
  padded = pad_prompts(full_prompts, config.vocab_size, prompt_length, full_masks)
  new_tokens = grammar.length - prefix_rows.shape[1]
  out = _run(config, params, padded, rng, sampling, new_tokens, plan_tokens.chat_im_end, False,
             grammar=grammar, grammar_start=prefix_rows.shape[1])
  tokens = jnp.concatenate([jnp.asarray(prefix_rows), out.tokens], axis=1)  # [B, length]
  body = tokens[:, :-1].reshape(batch, grammar.num_keyframes, KEYFRAME_LEN)  # [B, F-1, 84]
  codes = body[:, :, 2:2 + CODES_PER_KEYFRAME] - plan_tokens.code_offset  # [B, F-1, 81]
  return PlanSamples(tokens, codes)
