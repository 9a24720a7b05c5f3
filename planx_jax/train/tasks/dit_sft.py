"""Stage: DiT SFT. The base Wan DiT (no semantic branch) trains all its params on rectified flow from the text
(and, TI2V, the first frame) alone: the backbone the semantic branch is added to, and Plan-X Table 1's
"Wan 2.2 + SFT" baseline. Not the data pipeline."""

import jax
import jax.numpy as jnp

from planx_jax import dit
from planx_jax.data import pipeline
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task


class DiTSFT(Task):
  stage = "dit_sft"
  batch_layout = pipeline.DIT_EXAMPLES

  @classmethod
  def add_config(cls, c) -> None:
    common.add_flow_sections(c, text_drop=(0.1, 0.1, 1))
  models = ("dit",)

  def __init__(self, config):
    super().__init__(config)
    self.dit_config = common.build_dit_config(config)
    if self.dit_config.semantic_in_dim is not None:
      raise ValueError("dit_sft trains the base DiT: leave dit.overrides.semantic_in_dim unset")
    self.shapes = config.data.shapes
    self.sampling = common.timestep_sampling(config)

  def init_params(self, rng) -> dict:
    return {"dit": dit.init_params(self.dit_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"dit": dit.param_logical_axes(self.dit_config)}

  def pretrained_params(self) -> dict:
    loaded = common.load_base_dit(self.config, self.dit_config)
    return {"dit": loaded} if loaded else {}

  def trainable(self, params):
    return {"dit": jax.tree.map(lambda _: True, params["dit"])}

  def normalizers(self, batch) -> dict:
    return {"examples": jnp.asarray(batch["latents"].shape[0], jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    params = self.effective_params(params)
    per_example, dropped = common.flow_loss_per_example(
        rng, self.dit_config, params["dit"], batch, None, None, text_drop=common.text_drop(self.config, step),
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
