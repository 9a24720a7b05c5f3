"""Public entry points of the video DiT: model, presets, params, the semantic branch, conversion, checkpoints.

Gathers what lives in `models/dit*.py` and `convert/wan_dit.py` under the names users
import (`planx_jax.dit.load_diffusers`, ...). Glue only.
"""

import jax
import jax.numpy as jnp

from planx_jax.convert.wan_dit import load_diffusers, save_diffusers
from planx_jax.model_spec import ModelSpec
from planx_jax.models.dit import DiT
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.dit_semantic import (add_semantic_branch, batch_positions, semantic_branch_labels,
                                           semantic_positions, video_token_grid)
from planx_jax.sampling.dit_sampling import sample_latents

__all__ = [
    "DiT", "DiTConfig", "SPEC", "abstract_params", "add_semantic_branch", "batch_positions", "init_base_stand_in",
    "init_params", "load_checkpoint", "load_diffusers", "param_count", "param_logical_axes", "save_checkpoint",
    "save_diffusers", "sample_latents", "semantic_branch_labels", "semantic_positions", "video_token_grid",
]


def _example_inputs(config: DiTConfig):
  """Smallest inputs that create every param (one patch, one text token, one semantic token)."""
  pt, ph, pw = config.patch_size
  inputs = (jnp.zeros((1, pt, ph, pw, config.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, config.text_dim)))
  if config.semantic_in_dim is None:
    return inputs, {}
  return inputs, {"semantic": jnp.zeros((1, 1, config.semantic_in_dim)), "semantic_positions": jnp.zeros((1, 1, 3))}


def _boxed_init(config: DiTConfig):
  """Random params as original Wan initialises them (`models/dit.py`: Xavier-uniform kernels, N(0, 0.02) embedding
  MLPs, zero head and biases, unit norms, scaled-normal modulation tables)."""
  args, kwargs = _example_inputs(config)
  return lambda rng: DiT(config).init(rng, *args, **kwargs)


SPEC = ModelSpec(kind="dit", config_cls=DiTConfig, boxed_init=_boxed_init, layer_stack="blocks",
                 runtime_fields=frozenset({"dtype", "param_dtype", "attention_impl", "scan_layers", "remat"}))
init_params, abstract_params = SPEC.init_params, SPEC.abstract_params
param_count, param_logical_axes = SPEC.param_count, SPEC.param_logical_axes
save_checkpoint, load_checkpoint = SPEC.save_checkpoint, SPEC.load_checkpoint


def init_base_stand_in(config: DiTConfig, rng: jax.Array) -> dict:
  """Random params standing in for a pretrained DiT (the embedded default of `planx generate`, the semantic stages
  and RL without a checkpoint, tests): `init_params` with the output head drawn from N(0, 0.02) instead of Wan's
  zeros, which give velocity 0 for any input and no gradient to the layers below (a trained base has neither)."""
  k_init, k_head = jax.random.split(rng)
  params = init_params(config, k_init)
  head = params["head"]
  kernel = 0.02 * jax.random.normal(k_head, head["kernel"].shape, head["kernel"].dtype)
  return {**params, "head": {**head, "kernel": kernel}}
