"""Public entry points of the video DiT: model, presets, params, the semantic branch, conversion, checkpoints.

Gathers what lives in `models/dit*.py` and `convert/wan_dit.py` under the names users
import (`planx_jax.dit.load_diffusers`, ...). Glue only.
"""

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from planx_jax import checkpoints
from planx_jax.convert.wan_dit import load_diffusers, save_diffusers
from planx_jax.models import layer_layout
from planx_jax.models import params as model_params
from planx_jax.models.dit import DiT
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.dit_semantic import (add_semantic_branch, batch_positions, semantic_branch_labels,
                                           semantic_positions, video_token_grid)
from planx_jax.sampling.dit_sampling import sample_latents

__all__ = [
    "DiT", "DiTConfig", "abstract_params", "add_semantic_branch", "batch_positions", "init_params",
    "load_checkpoint", "load_diffusers", "param_count", "param_logical_axes", "save_checkpoint", "save_diffusers",
    "sample_latents", "semantic_branch_labels", "semantic_positions", "video_token_grid",
]

CHECKPOINT_KIND = "dit"
RUNTIME_FIELDS = {"dtype", "param_dtype", "attention_impl", "scan_layers", "remat"}


def _example_inputs(config: DiTConfig):
  """Smallest inputs that create every param (one patch, one text token, one semantic token)."""
  pt, ph, pw = config.patch_size
  inputs = (jnp.zeros((1, pt, ph, pw, config.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, config.text_dim)))
  if config.semantic_in_dim is None:
    return inputs, {}
  return inputs, {"semantic": jnp.zeros((1, 1, config.semantic_in_dim)), "semantic_positions": jnp.zeros((1, 1, 3))}


def _boxed_init(config: DiTConfig):
  args, kwargs = _example_inputs(config)
  return lambda rng: DiT(config).init(rng, *args, **kwargs)


def init_params(config: DiTConfig, rng: jax.Array) -> dict:
  """Random params as original Wan initialises them (`models/dit.py`: Xavier-uniform kernels, N(0, 0.02) embedding
  MLPs, zero head and biases, unit norms, scaled-normal modulation tables)."""
  return model_params.init_params(_boxed_init(config), rng)


def init_base_stand_in(config: DiTConfig, rng: jax.Array) -> dict:
  """Random params standing in for a pretrained DiT (the embedded default of `planx generate`, the semantic stages
  and RL without a checkpoint, tests): `init_params` with the output head drawn from N(0, 0.02) instead of Wan's
  zeros, which give velocity 0 for any input and no gradient to the layers below (a trained base has neither)."""
  k_init, k_head = jax.random.split(rng)
  params = init_params(config, k_init)
  head = params["head"]
  kernel = 0.02 * jax.random.normal(k_head, head["kernel"].shape, head["kernel"].dtype)
  return {**params, "head": {**head, "kernel": kernel}}


def abstract_params(config: DiTConfig) -> dict:
  return model_params.abstract_params(_boxed_init(config))


def param_count(config: DiTConfig) -> int:
  return model_params.param_count(_boxed_init(config))


def param_logical_axes(config: DiTConfig) -> dict:
  return model_params.param_logical_axes(_boxed_init(config))


def save_checkpoint(path: str | os.PathLike, config: DiTConfig, params: dict, *,
                    extras: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
  """Writes a planx DiT checkpoint directory (what `planx generate` and training read)."""
  return checkpoints.save_model(path, kind=CHECKPOINT_KIND, config=config.to_dict(), params=params, extras=extras,
                                overwrite=overwrite)


def load_checkpoint(path: str | os.PathLike, **config_overrides):
  """Reads a DiT checkpoint directory -> (config, params, meta); overrides may change run-time fields only."""
  config, params, meta = checkpoints.load_model(path, kind=CHECKPOINT_KIND, config_cls=DiTConfig,
                                                abstract_params_fn=abstract_params, runtime_fields=RUNTIME_FIELDS,
                                                overrides=config_overrides)
  return config, layer_layout.to_layout(params, config.num_layers, config.scan_layers, "blocks"), meta
