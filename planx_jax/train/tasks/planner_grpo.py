"""RL stage: planner GRPO / GSPO (TempAct Eq. 3-4, 9-10; ReaDe Eq. 5-6) on rollout batches of sampled plans.

A row is one sampled plan: the conversation with the plan spliced in, the log-probs of its code tokens under the
policy that sampled it (`old_logp`) and under the frozen reference (`ref_logp`), and the plan's group-normalised
advantage. The policy is the grammar-constrained sampler's distribution: at a code step the planner's logits over
the code ids only, divided by the sampling temperature; the forced structural tokens have probability 1 and are
not scored. Not the sampling or the rewards (see `planx_jax.rl`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import planner
from planx_jax.data.conversation import PLAN_FRAME_CODES
from planx_jax.data.tokenizer import planner_tokenizer
from planx_jax.losses import rl as rl_losses
from planx_jax.losses.lm import next_token_targets
from planx_jax.train.tasks import common
from planx_jax.train.tasks.planner_sft import PlannerTask

LEVELS = rl_losses.IMPORTANCE_LEVELS
LOSS_TYPES = rl_losses.LOSS_TYPES


def check_group(config) -> int:
  g = int(config.rl.group_size)
  if g < 2:
    raise ValueError(f"rl.group_size must be >= 2 (advantages are normalised within a group), got {g}")
  if config.batch_size % g:
    raise ValueError(f"batch_size {config.batch_size} (rows) is not a multiple of rl.group_size {g}")
  return g


class PlannerGRPO(PlannerTask):
  stage = "planner_grpo"
  batch_source = "rollout"  # sampled plans (planx_jax.rl)

  @classmethod
  def add_config(cls, c) -> None:
    super().add_config(c)
    common.add_rl_sections(c, reward="world_plan")
    c.rl.level = "token"  # token (GRPO), sequence (GSPO), sequence_token (GSPO-token)
    c.rl.loss_type = "grpo"  # grpo / bnpo / dr_grpo / dapo
    c.rl.temperature = 1.0

  def __init__(self, config):
    super().__init__(config)
    self.num_keyframes = int(config.data.shapes.num_keyframes)
    self.plan_codes = (self.num_keyframes - 1) * PLAN_FRAME_CODES  # scored tokens per plan
    rl = config.rl
    if rl.level not in LEVELS:
      raise ValueError(f"rl.level must be one of {LEVELS}, got {rl.level!r}")
    if rl.loss_type not in LOSS_TYPES:
      raise ValueError(f"rl.loss_type must be one of {LOSS_TYPES}, got {rl.loss_type!r}")
    if not float(rl.temperature) > 0:
      raise ValueError(f"rl.temperature must be > 0 (the policy is the sampling distribution), got {rl.temperature}")
    self.group_size = check_group(config)
    self.rows_per_prompt = self.group_size  # a row is a sampled plan
    _, self.plan_tokens = planner_tokenizer(config)
    if self.plan_tokens.vocab_size > self.planner_config.vocab_size:
      raise ValueError(f"the Plan-X layout needs {self.plan_tokens.vocab_size} embedding rows, the planner has "
                       f"{self.planner_config.vocab_size}")

  # --- rollout batches ------------------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> dict:
    b, length = batch_size, self.seq_len
    i32, f32, bool_ = np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.bool_)
    return {"token_ids": ((b, length), i32), "positions": ((b, length), i32), "segment_ids": ((b, length), i32),
            "loss_mask": ((b, length), bool_), "zero_embed": ((b, length), bool_),
            "old_logp": ((b, length), f32), "ref_logp": ((b, length), f32),
            "advantages": ((b,), f32), "rewards": ((b,), f32)}

  def token_logps(self, planner_params, batch) -> jax.Array:
    """[B, L] fp32: position t holds log pi(token t+1 | tokens <= t) over the code ids at the sampling
    temperature (0 where the next token is not a scored code)."""
    hidden = common.planner_hidden(self.planner_config, planner_params, batch, batch["zero_embed"])  # [B, L, H]
    head, layout = common.planner_head(self.planner_config, planner_params)
    lo = self.plan_tokens.code_offset
    hi = lo + self.plan_tokens.codebook_size
    head = head[:, lo:hi] if layout == "hv" else head[lo:hi]  # the code columns: the sampler's support
    targets, mask = next_token_targets(batch["token_ids"], batch["loss_mask"])
    code_targets = jnp.where(mask, targets - lo, 0)
    logp = rl_losses.chunked_token_log_probs(hidden, head, code_targets, head_layout=layout,
                                             temperature=float(self.config.rl.temperature),
                                             chunk_size=int(self.config.ce_chunk))
    return jnp.where(mask, logp, 0.0)

  def normalizers(self, batch) -> dict:
    _, mask = next_token_targets(batch["token_ids"], batch["loss_mask"])
    return {"rows": jnp.asarray(batch["token_ids"].shape[0], jnp.int32), "tokens": jnp.sum(mask, dtype=jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    del rng, step
    rl = self.config.rl
    logp = self.token_logps(self.effective_params(params)["planner"], batch)
    _, mask = next_token_targets(batch["token_ids"], batch["loss_mask"])
    loss, metrics = rl_losses.policy_loss(
        logp, batch["old_logp"], batch["advantages"], mask, level=rl.level, loss_type=rl.loss_type,
        eps_low=float(rl.eps_low), eps_high=float(rl.eps_high),
        ref_logp=batch["ref_logp"] if float(rl.beta) > 0 else None, beta=float(rl.beta), kl=rl.kl,
        advantage_clip=float(rl.advantage_clip) or None, log_ratio_clip=float(rl.log_ratio_clip) or None,
        max_len=self.plan_codes, num_sequences=normalizers["rows"], num_tokens=normalizers["tokens"])
    rows = normalizers["rows"].astype(jnp.float32)
    metrics = {**{f"rl/{k}": v for k, v in metrics.items()}, "reward": jnp.sum(batch["rewards"]) / rows}
    return loss, metrics

  def model_flops(self, batch_size: int) -> float:
    # With LoRA the base weights get no gradient: forward + activation gradients only (the factors are tiny).
    return common.planner_flops(self.planner_config, planner.param_count(self.planner_config), batch_size,
                                self.seq_len, not self.lora_rank)
