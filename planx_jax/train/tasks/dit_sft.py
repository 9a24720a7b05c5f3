"""Stage: DiT SFT. The base Wan DiT (no semantic branch) trains all its params on rectified flow from the text
(and, TI2V, the first frame) alone: the backbone the semantic branch is added to, and Plan-X Table 1's
"Wan 2.2 + SFT" baseline. Not the data pipeline."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import dit as dit_api
from planx_jax.models.dit_config import DiTConfig
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task
from planx_jax.train.tasks.dit_stage1 import timestep_sampling


def load_base_dit(config, dit_config: DiTConfig) -> dict:
  """Host params from `dit.checkpoint`, which must be a base DiT (no semantic branch) of the configured shape."""
  path = config.dit.checkpoint
  if not path:
    return {}
  if not os.path.isdir(path):
    raise FileNotFoundError(f"dit.checkpoint {path} is not a directory")
  loaded_config, params, _ = dit_api.load_checkpoint(path, scan_layers=dit_config.scan_layers)
  if loaded_config.semantic_in_dim is not None:
    raise ValueError(f"dit.checkpoint {path} has a semantic branch; dit_sft trains the base DiT without one")
  for field in ("dim", "num_layers", "in_channels", "text_dim", "ffn_dim", "patch_size"):
    if getattr(loaded_config, field) != getattr(dit_config, field):
      raise ValueError(f"dit.checkpoint {path} has {field}={getattr(loaded_config, field)}, the config "
                       f"{getattr(dit_config, field)}")
  logging.info("dit: starting from %s", path)
  return jax.tree.map(np.asarray, params)


class DiTSFT(Task):
  stage = "dit_sft"
  models = ("dit",)

  def __init__(self, config):
    super().__init__(config)
    self.dit_config = common.model_config(DiTConfig, config.dit, config.precision.compute_dtype, config.remat)
    if self.dit_config.semantic_in_dim is not None:
      raise ValueError("dit_sft trains the base DiT: leave dit.overrides.semantic_in_dim unset")
    self.shapes = config.data.shapes
    self.sampling = timestep_sampling(config)

  def init_params(self, rng) -> dict:
    return {"dit": dit_api.init_params(self.dit_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"dit": dit_api.param_logical_axes(self.dit_config)}

  def pretrained_params(self) -> dict:
    loaded = load_base_dit(self.config, self.dit_config)
    return {"dit": loaded} if loaded else {}

  def trainable(self, params):
    return {"dit": jax.tree.map(lambda _: True, params["dit"])}

  def normalizers(self, batch) -> dict:
    return {"examples": jnp.asarray(batch["latents"].shape[0], jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    params = self.effective_params(params)
    per_example, dropped = common.flow_loss_per_example(
        rng, self.dit_config, params["dit"], batch, None, None, text_drop=float(self.config.text_drop),
        i2v_prob=float(self.config.i2v_prob), sampling=self.sampling)
    n = normalizers["examples"].astype(jnp.float32)
    loss = jnp.sum(per_example) / n
    return loss, {"flow_loss": loss, "text_dropped": jnp.sum(dropped) / n}

  def model_flops(self, batch_size: int) -> float:
    s = self.shapes
    pt, ph, pw = self.dit_config.patch_size
    tokens = (s.latent_shape[0] // pt) * (s.latent_shape[1] // ph) * (s.latent_shape[2] // pw)
    n = dit_api.param_count(self.dit_config)
    return common.dit_flops(self.dit_config, n, n if not self.lora_rank else 0, batch_size, tokens,
                            s.text_shape[0], 0)

  def export(self, params, directory) -> None:
    params = jax.tree.map(np.asarray, self.effective_params(params)["dit"])
    dit_api.save_diffusers(self.dit_config, params, os.path.join(directory, "dit_diffusers"), overwrite=True)
