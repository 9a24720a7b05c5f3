"""Plan-X vocabulary extension of the planner's embedding and head (DESIGN.md decision 1).

Rows for `<im_start>`, `<im_end>`, `<S0..2>` and `<I0..>` are appended after the
tokenizer's text entries; Qwen's untrained padding rows beyond them are dropped.
This module only resizes params; token ids live in `planx_jax.plan_tokens`.
"""

import numpy as np
import jax.numpy as jnp

from planx_jax.models.planner_config import PlannerConfig
from planx_jax.plan_tokens import PlanTokens


def _extended_rows(table, plan_tokens: PlanTokens, codebook):
  """table [V_old, H] -> [plan_tokens.vocab_size, H] with the new rows initialised."""
  xp = np if isinstance(table, np.ndarray) else jnp
  text = table[: plan_tokens.text_vocab_size]  # [T, H]
  mean = xp.mean(text.astype(xp.float32), axis=0).astype(table.dtype)  # [H]
  num_new = plan_tokens.vocab_size - plan_tokens.text_vocab_size
  new = xp.broadcast_to(mean, (num_new, table.shape[1]))  # [5 + K, H]
  if codebook is not None:
    markers = plan_tokens.code_offset - plan_tokens.text_vocab_size
    new = xp.concatenate([new[:markers], xp.asarray(codebook).astype(table.dtype)], axis=0)
  return xp.concatenate([text, new], axis=0)


def extend_vocab(config: PlannerConfig, params: dict, plan_tokens: PlanTokens,
                 codebook=None) -> tuple[PlannerConfig, dict]:
  """Adds the Plan-X tokens to the embedding (and untied lm_head).

  New rows are the mean of the tokenizer's text rows [0, text_vocab_size), or, for
  the `<I*>` rows, the given codebook vectors [codebook_size, hidden_size] when
  their width equals the planner's. Works on numpy or JAX params; returns the
  updated config (vocab_size = plan_tokens.vocab_size) and a new params dict.
  """
  if config.vocab_size < plan_tokens.text_vocab_size:
    raise ValueError(f"planner has {config.vocab_size} embedding rows, fewer than the tokenizer's "
                     f"{plan_tokens.text_vocab_size} text entries")
  if codebook is not None:
    shape = tuple(np.shape(codebook))
    expected = (plan_tokens.codebook_size, config.hidden_size)
    if shape != expected:
      raise ValueError(f"codebook has shape {shape}; initialising code rows needs {expected} "
                       "(codebook_size, hidden_size): widths must match")
  params = dict(params)
  embed = params["embed"]["embedding"]
  params["embed"] = {"embedding": _extended_rows(embed, plan_tokens, codebook)}
  if not config.tie_word_embeddings:
    head = params["lm_head"]["kernel"]  # [H, V]
    params["lm_head"] = {"kernel": _extended_rows(head.T, plan_tokens, codebook).T}
  return config.replace(vocab_size=plan_tokens.vocab_size), params
