"""Planner rollouts for GRPO / GSPO: G plans per prompt from the grammar-constrained KV-cache sampler, their
rewards and group advantages, and the rows `PlannerGRPO` trains on (old / reference log-probs included). Not the
loss (train/tasks/planner_grpo.py)."""

import dataclasses
import functools

import jax
import numpy as np

from planx_jax.losses import rl as rl_losses
from planx_jax.sampling import SamplingConfig, sample_plans
from planx_jax.sampling.plan_grammar import PlanGrammar


@dataclasses.dataclass(frozen=True)
class PlannerRollout:
  rows: dict  # the PlannerGRPO batch rows (numpy), prompts x G
  codes: np.ndarray  # [B, K-1, 81] sampled plan codes
  rewards: np.ndarray  # [B]
  conversations: list  # PlanConversation per row, the plan spliced in


def pack_rows(conversations, seq_len: int, pad_id: int) -> dict:
  """Right-padded [B, L] rows of full conversations: ids, positions, segment ids (0 on padding), code-target mask
  and the zeroed-embedding mask."""
  b = len(conversations)
  rows = {"token_ids": np.full((b, seq_len), pad_id, np.int32), "positions": np.zeros((b, seq_len), np.int32),
          "segment_ids": np.zeros((b, seq_len), np.int32), "loss_mask": np.zeros((b, seq_len), bool),
          "zero_embed": np.zeros((b, seq_len), bool)}
  for i, conv in enumerate(conversations):
    n = len(conv.token_ids)
    if n > seq_len:
      raise ValueError(f"a conversation of {n} tokens does not fit data.seq_len {seq_len}")
    rows["token_ids"][i, :n] = conv.token_ids
    rows["positions"][i, :n] = np.arange(n)
    rows["segment_ids"][i, :n] = 1
    rows["loss_mask"][i, :n] = conv.loss_mask
    rows["zero_embed"][i, :n] = conv.first_frame_mask & (not conv.has_first_frame)
  return rows


@functools.lru_cache(maxsize=8)
def _logp_fn(task):
  return jax.jit(task.token_logps)


def sample(task, env, params: dict, ref_params: dict | None, indices, rng):
  """Samples `task.group_size` plans for each prompt index (rows g * G .. g * G + G - 1 are prompt g's group).

  Returns (rows without rewards / advantages, codes [B, K-1, 81], prompt index per row [B], the prompts'
  conditions, the conversations with the plans spliced in).

  Args:
    task: the `PlannerGRPO` task (config, planner config, plan tokens).
    env: a world environment (prompts, conversations, rewards).
    params / ref_params: the policy's and the frozen reference's planner params (None: no KL term).
    indices: the step's prompt indices.
  """
  g = task.group_size
  k = task.num_keyframes
  cond = env.conditions(indices)
  prompts = env.plan_prompts(indices, cond)
  rows_idx = np.repeat(np.asarray(indices), g)
  prompt_ids = [prompts[j // g].token_ids for j in range(len(rows_idx))]
  width = task.seq_len - PlanGrammar(task.plan_tokens, k).length  # one compiled sampler for every step
  samples = sample_plans(task.planner_config, params, task.plan_tokens, prompt_ids, k, rng,
                         SamplingConfig(temperature=float(task.config.rl.temperature)), prompt_length=width)
  codes = np.asarray(samples.codes)  # [B, K-1, 81]
  conversations = [env.plan_conversation(int(i), cond.codes_s0[j // g], codes[j]) for j, i in enumerate(rows_idx)]
  rows = pack_rows(conversations, task.seq_len, task.plan_tokens.endoftext)
  logp = _logp_fn(task)
  rows["old_logp"] = np.asarray(logp(params, rows), np.float32)
  rows["ref_logp"] = (np.zeros_like(rows["old_logp"]) if ref_params is None else
                      np.asarray(logp(ref_params, rows), np.float32))
  return rows, codes, rows_idx, cond, conversations


def rollout(task, env, params: dict, ref_params: dict | None, indices, rng) -> PlannerRollout:
  """`sample`, then the plans' rewards (`rl.reward`) and their advantages within each prompt's group."""
  rows, codes, rows_idx, _, conversations = sample(task, env, params, ref_params, indices, rng)
  rl = task.config.rl
  rewards = env.plan_rewards(str(rl.reward), rows_idx, codes)
  advantages = rl_losses.group_advantages(rewards, task.group_size, scale=rl.advantage_scale,
                                          eps=float(rl.advantage_eps), ddof=int(rl.advantage_ddof))
  rows["advantages"] = np.asarray(advantages, np.float32)
  rows["rewards"] = rewards.astype(np.float32)
  return PlannerRollout(rows, codes, rewards, conversations)
