"""Stage: DiT SFT. The base Wan DiT (no semantic branch) trains all its params on rectified flow from the text
(and, TI2V, the first frame) alone: the backbone the semantic branch is added to, and Plan-X Table 1's
"Wan 2.2 + SFT" baseline. Not the data pipeline."""

import jax
import jax.numpy as jnp

from planx_jax import dit
from planx_jax.models.dit_config import DiTConfig
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task
from planx_jax.train.tasks.dit_stage1 import DIT_CHECKED_FIELDS, load_dit_checkpoint, timestep_sampling


def load_base_dit(config, dit_config: DiTConfig) -> dict:
  """Host params from `dit.checkpoint`, which must be a base DiT (no semantic branch) of the configured shape."""
  def no_branch(loaded_config, params):
    if loaded_config.semantic_in_dim is not None:
      raise ValueError(f"dit.checkpoint {config.dit.checkpoint} has a semantic branch; dit_sft trains the base DiT "
                       "without one")
    return loaded_config, params

  return common.read_checkpoint("dit", config.dit.checkpoint, lambda p: load_dit_checkpoint(p, dit_config),
                                dit_config, DIT_CHECKED_FIELDS, adapt=no_branch)


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
    return {"dit": dit.init_params(self.dit_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"dit": dit.param_logical_axes(self.dit_config)}

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
    return common.mean_flow_loss(per_example, dropped, normalizers)

  def model_flops(self, batch_size: int) -> float:
    s = self.shapes
    tokens = common.video_tokens(self.dit_config, s.latent_shape)
    n = dit.param_count(self.dit_config)
    return common.dit_flops(self.dit_config, n, n if not self.lora_rank else 0, batch_size, tokens,
                            s.text_shape[0], 0)

  def export(self, params, directory) -> None:
    common.export_dit(self.dit_config, self.effective_params(params)["dit"], directory)
