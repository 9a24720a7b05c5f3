"""Plan-X stage: planner SFT (Eq. 2): next-token CE on the assistant's keyframe codes over packed conversations,
with the first frame's code embeddings zeroed with probability p = 0.5 per conversation. Not the data packing."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import planner
from planx_jax.data import pipeline
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task


class PlannerTask(Task):
  """What the planner-only stages share (SFT, GRPO / GSPO): the planner's params, all trainable, its checkpoint
  and its HF export."""

  models = ("planner",)

  @classmethod
  def add_config(cls, c) -> None:
    common.add_planner_sections(c)

  def __init__(self, config):
    super().__init__(config)
    self.planner_config = common.build_planner_config(config)
    self.seq_len = int(config.data.seq_len)

  def init_params(self, rng) -> dict:
    return {"planner": planner.init_params(self.planner_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"planner": planner.param_logical_axes(self.planner_config)}

  def pretrained_params(self) -> dict:
    loaded = common.load_planner(self.config, self.planner_config)
    return {"planner": loaded} if loaded else {}

  def trainable(self, params):
    return jax.tree.map(lambda _: True, params)

  def export(self, params, directory) -> None:
    params = jax.tree.map(np.asarray, self.effective_params(params)["planner"])
    planner.save_hf(self.planner_config, params, os.path.join(directory, "planner_hf"), overwrite=True)


class PlannerSFT(PlannerTask):
  stage = "planner_sft"
  batch_layout = pipeline.PACKED_CONVERSATIONS

  @classmethod
  def add_config(cls, c) -> None:
    super().add_config(c)
    c.first_frame_drop = 0.5  # Plan-X: first-frame code embeddings zeroed with p = 0.5 (T2V / I2V hybrid)

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
