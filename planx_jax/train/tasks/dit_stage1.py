"""Plan-X stage: DiT stage 1. The Wan base is frozen and only the semantic branch (MLP, k_sem, v_sem,
norm_k_sem) trains on rectified flow, with TA-Tok codebook vectors of the keyframe codes as semantic tokens and
the text dropped with probability 1.0 -> 0.5 (DESIGN.md decision 6). Not the data pipeline."""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from planx_jax import dit
from planx_jax.data import pipeline
from planx_jax import tatok
from planx_jax.models.dit_semantic import keyframe_positions, semantic_branch_labels
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task

class DiTStage1(Task):
  stage = "dit_stage1"
  batch_layout = pipeline.DIT_EXAMPLES

  @classmethod
  def add_config(cls, c) -> None:
    common.add_flow_sections(c, text_drop=(1.0, 0.5, 1000))  # DESIGN.md decision 6
    c.tatok = ml_collections.ConfigDict({"code_dim": 1536, "checkpoint": ""})
  models = ("dit",)

  def __init__(self, config):
    super().__init__(config)
    self.code_dim = int(config.tatok.code_dim)
    self.codebook_size = int(config.codebook_size)
    self.dit_config = common.build_dit_config(config, self.code_dim)
    self.shapes = config.data.shapes
    self.sampling = common.timestep_sampling(config)
    self.positions = keyframe_positions(self.dit_config, tuple(self.shapes.latent_shape), self.shapes.num_keyframes,
                                        float(config.video_fps))  # [K * 81, 3]

  def init_params(self, rng) -> dict:
    k_dit, k_code = jax.random.split(rng)
    codebook = jax.random.normal(k_code, (self.codebook_size, self.code_dim), jnp.float32)
    codebook = codebook / jnp.linalg.norm(codebook, axis=-1, keepdims=True)
    return {"dit": common.init_dit_with_branch(self.dit_config, k_dit), "codebook": codebook}

  def param_logical_axes(self) -> dict:
    return {"dit": dit.param_logical_axes(self.dit_config),
            "codebook": jax.sharding.PartitionSpec(None, None)}

  def pretrained_params(self) -> dict:
    out = {}
    loaded = common.load_dit(self.config, self.dit_config)
    if loaded:
      out["dit"] = loaded
    path = self.config.tatok.checkpoint
    if path:
      tatok_config, tatok_params, _ = tatok.load_checkpoint(path)
      if (tatok_config.codebook_size, tatok_config.code_dim) != (self.codebook_size, self.code_dim):
        raise ValueError(f"tatok.checkpoint {path} has {tatok_config.codebook_size} codes of width "
                         f"{tatok_config.code_dim}; the config says {self.codebook_size} x {self.code_dim}")
      out["codebook"] = np.asarray(tatok.codebook_vectors(tatok_config, tatok_params))
      logging.info("tatok: codebook from %s", path)
    return out

  def trainable(self, params):
    labels = semantic_branch_labels(params["dit"])
    return {"dit": jax.tree.map(lambda label: label == "trainable", labels),
            "codebook": False}

  def always_trainable(self, params):
    return self.trainable(params)

  def normalizers(self, batch) -> dict:
    return {"examples": jnp.asarray(batch["latents"].shape[0], jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    params = self.effective_params(params)
    b = batch["latents"].shape[0]
    semantic = params["codebook"][batch["codes_s2"].reshape(b, -1)]  # [B, K * 81, code_dim]
    positions = jnp.broadcast_to(jnp.asarray(self.positions), (b, *self.positions.shape))
    per_example, dropped = common.flow_loss_per_example(
        rng, self.dit_config, params["dit"], batch, semantic, positions, text_drop=common.text_drop(self.config, step),
        i2v_prob=float(self.config.i2v_prob), sampling=self.sampling)
    return common.mean_flow_loss(per_example, dropped, normalizers)

  def model_flops(self, batch_size: int) -> float:
    s = self.shapes
    tokens = common.video_tokens(self.dit_config, s.latent_shape)
    abstract = jax.eval_shape(lambda: self.init_params(jax.random.key(0)))["dit"]
    mask = self.trainable({"dit": abstract, "codebook": None})["dit"]
    n = sum(x.size for x in jax.tree.leaves(abstract))
    n_train = sum(x.size for x, m in zip(jax.tree.leaves(abstract), jax.tree.leaves(mask)) if m)
    return common.dit_flops(self.dit_config, n, n_train, batch_size, tokens, s.text_shape[0],
                            s.num_keyframes * common.CODES_PER_KEYFRAME)

  def export(self, params, directory) -> None:
    common.export_dit(self.dit_config, self.effective_params(params)["dit"], directory)
