"""Plan-X stage: planner SFT (Eq. 2): next-token CE on the assistant's keyframe codes over packed conversations,
with the first frame's code embeddings zeroed with probability p = 0.5 per conversation. Not the data packing."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import planner
from planx_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer, plan_tokens_from_tokenizer
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task


def planner_tokenizer(config):
  """(tokenizer, PlanTokens) of the run: `planner.tokenizer` (a directory) or the tiny test tokenizer."""
  path = config.planner.tokenizer
  if path:
    tokenizer = load_tokenizer(path)
    return tokenizer, plan_tokens_from_tokenizer(tokenizer, int(config.codebook_size))
  tokenizer = build_tiny_tokenizer(int(config.codebook_size))
  return tokenizer, plan_tokens_from_tokenizer(tokenizer, int(config.codebook_size))


def build_planner_config(config) -> PlannerConfig:
  return common.model_config(PlannerConfig, config.planner, config.precision.compute_dtype, config.remat)


def load_planner(config, planner_config: PlannerConfig) -> dict:
  """Host params from `planner.checkpoint` (a planx planner checkpoint), checked against the run's config."""
  def load(path):
    loaded_config, params, _ = planner.load_checkpoint(path, scan_layers=planner_config.scan_layers)
    return loaded_config, params

  return common.read_checkpoint("planner", config.planner.checkpoint, load, planner_config,
                                ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"))


class PlannerTask(Task):
  """What the planner-only stages share (SFT, GRPO / GSPO): the planner's params, all trainable, its checkpoint
  and its HF export."""

  models = ("planner",)

  def __init__(self, config):
    super().__init__(config)
    self.planner_config = build_planner_config(config)
    self.seq_len = int(config.data.seq_len)

  def init_params(self, rng) -> dict:
    return {"planner": planner.init_params(self.planner_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"planner": planner.param_logical_axes(self.planner_config)}

  def pretrained_params(self) -> dict:
    loaded = load_planner(self.config, self.planner_config)
    return {"planner": loaded} if loaded else {}

  def trainable(self, params):
    return jax.tree.map(lambda _: True, params)

  def export(self, params, directory) -> None:
    params = jax.tree.map(np.asarray, self.effective_params(params)["planner"])
    planner.save_hf(self.planner_config, params, os.path.join(directory, "planner_hf"), overwrite=True)


class PlannerSFT(PlannerTask):
  stage = "planner_sft"

  def __init__(self, config):
    super().__init__(config)
    self.first_frame_drop = float(config.first_frame_drop)
    if not 0.0 <= self.first_frame_drop <= 1.0:
      raise ValueError(f"first_frame_drop must be in [0, 1], got {self.first_frame_drop}")

  def normalizers(self, batch) -> dict:
    return {"tokens": common.num_target_tokens(batch)}

  def loss(self, params, batch, rng, step, normalizers):
    del step
    params = self.effective_params(params)["planner"]
    zero = common.first_frame_zero_mask(rng, batch, self.first_frame_drop)
    hidden = common.planner_hidden(self.planner_config, params, batch, zero)
    nll = common.planner_nll_sum(self.planner_config, params, hidden, batch, int(self.config.ce_chunk))
    loss = nll / jnp.maximum(normalizers["tokens"], 1).astype(jnp.float32)
    return loss, {"ce_loss": loss}

  def model_flops(self, batch_size: int) -> float:
    return common.planner_flops(self.planner_config, planner.param_count(self.planner_config), batch_size,
                                self.seq_len, True)
