"""Plan-X stage: end-to-end. The planner's final hidden states at its planned code tokens feed the DiT's
semantic branch; loss = flow_weight * flow (1.0) + ce_weight * planner CE (0.1), and both models train.
Not the data pipeline (rows hold one conversation with `semantic_index` pointing at its planned codes)."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import dit
from planx_jax import planner
from planx_jax.data import pipeline
from planx_jax.models.dit_semantic import keyframe_positions, semantic_branch_labels
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task

DIT_TRAINABLE = ("all", "semantic_branch")


class EndToEnd(Task):
  stage = "end_to_end"
  batch_layout = pipeline.CONVERSATION_WITH_DIT

  @classmethod
  def add_config(cls, c) -> None:
    common.add_planner_sections(c)
    c.first_frame_drop = 0.5  # Plan-X: first-frame code embeddings zeroed with p = 0.5 (T2V / I2V hybrid)
    common.add_flow_sections(c, text_drop=(0.1, 0.1, 1))
    c.flow_weight = 1.0
    c.ce_weight = 0.1
    c.dit_trainable = "all"  # or "semantic_branch"
  models = ("planner", "dit")

  def __init__(self, config):
    super().__init__(config)
    self.planner_config = common.build_planner_config(config)
    self.dit_config = common.build_dit_config(config, self.planner_config.hidden_size)
    self.seq_len = int(config.data.seq_len)
    self.shapes = config.data.shapes
    self.sampling = common.timestep_sampling(config)
    if config.dit_trainable not in DIT_TRAINABLE:
      raise ValueError(f"dit_trainable must be one of {DIT_TRAINABLE}, got {config.dit_trainable!r}")
    k = int(self.shapes.num_keyframes)
    if k < 2:
      raise ValueError(f"end_to_end needs at least 2 keyframes (the first is given, the rest planned), got {k}")
    self.num_semantic = (k - 1) * common.CODES_PER_KEYFRAME
    self.positions = keyframe_positions(self.dit_config, tuple(self.shapes.latent_shape), list(range(1, k)),
                                        float(config.video_fps))  # [(K - 1) * 81, 3]

  def init_params(self, rng) -> dict:
    k_planner, k_dit = jax.random.split(rng)
    return {"planner": planner.init_params(self.planner_config, k_planner),
            "dit": common.init_dit_with_branch(self.dit_config, k_dit)}

  def param_logical_axes(self) -> dict:
    return {"planner": planner.param_logical_axes(self.planner_config),
            "dit": dit.param_logical_axes(self.dit_config)}

  def pretrained_params(self) -> dict:
    out = {}
    planner_params = common.load_planner(self.config, self.planner_config)
    if planner_params:
      out["planner"] = planner_params
    dit_params = common.load_dit(self.config, self.dit_config)
    if dit_params:
      out["dit"] = dit_params
    return out

  def trainable(self, params):
    dit_mask = jax.tree.map(lambda _: True, params["dit"])
    if self.config.dit_trainable == "semantic_branch":
      dit_mask = jax.tree.map(lambda label: label == "trainable", semantic_branch_labels(params["dit"]))
    return {"planner": jax.tree.map(lambda _: True, params["planner"]), "dit": dit_mask}

  def always_trainable(self, params):
    return {"planner": jax.tree.map(lambda _: False, params["planner"]),
            "dit": jax.tree.map(lambda label: label == "trainable", semantic_branch_labels(params["dit"]))}

  def normalizers(self, batch) -> dict:
    return {"tokens": common.num_target_tokens(batch),
            "examples": jnp.asarray(batch["latents"].shape[0], jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    params = self.effective_params(params)
    k_zero, k_flow = jax.random.split(rng)
    b = batch["latents"].shape[0]
    zero = common.first_frame_zero_mask(k_zero, batch, float(self.config.first_frame_drop))
    hidden = common.planner_hidden(self.planner_config, params["planner"], batch, zero)  # [B, L, H]
    nll = common.planner_nll_sum(self.planner_config, params["planner"], hidden, batch, int(self.config.ce_chunk))
    ce = nll / jnp.maximum(normalizers["tokens"], 1).astype(jnp.float32)
    semantic = jnp.take_along_axis(hidden, batch["semantic_index"][..., None], axis=1)  # [B, S, H]
    positions = jnp.broadcast_to(jnp.asarray(self.positions), (b, *self.positions.shape))
    per_example, _ = common.flow_loss_per_example(
        k_flow, self.dit_config, params["dit"], batch, semantic, positions, batch["semantic_mask"],
        text_drop=common.text_drop(self.config, step), i2v_prob=float(self.config.i2v_prob), sampling=self.sampling)
    flow = jnp.sum(per_example) / normalizers["examples"].astype(jnp.float32)
    loss = float(self.config.flow_weight) * flow + float(self.config.ce_weight) * ce
    return loss, {"flow_loss": flow, "ce_loss": ce}

  def model_flops(self, batch_size: int) -> float:
    s = self.shapes
    tokens = common.video_tokens(self.dit_config, s.latent_shape)
    n_dit = dit.param_count(self.dit_config)
    n_dit_train = n_dit if self.config.dit_trainable == "all" else 0
    return (common.planner_flops(self.planner_config, planner.param_count(self.planner_config), batch_size,
                                 self.seq_len, True)
            + common.dit_flops(self.dit_config, n_dit, n_dit_train, batch_size, tokens, s.text_shape[0],
                               self.num_semantic))

  def export(self, params, directory) -> None:
    params = jax.tree.map(np.asarray, self.effective_params(params))
    planner.save_hf(self.planner_config, params["planner"], os.path.join(directory, "planner_hf"),
                        overwrite=True)
    common.export_dit(self.dit_config, params["dit"], directory)
