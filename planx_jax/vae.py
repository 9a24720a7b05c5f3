"""Public entry points of the Wan video VAE: config and presets, params, encode / decode (whole clips or streamed
chunks), diffusers conversion, planx checkpoints.

Gathers `models/vae*.py` and `convert/wan_vae.py` under the names users import
(`planx_jax.vae.load_diffusers`, `planx_jax.vae.decode`, ...). Glue only.
"""

import os
from pathlib import Path
from typing import Any

import jax

from planx_jax import checkpoints
from planx_jax.convert.wan_vae import load_diffusers, save_diffusers
from planx_jax.models import params as model_params
from planx_jax.models.vae import WanVAE, example_inputs
from planx_jax.models.vae_coding import (DecodeCache, compile_decode_chunk, decode, decode_chunk, encode,
                                         init_decode_cache, patchify, unpatchify)
from planx_jax.models.vae_config import VAEConfig

__all__ = [
    "DecodeCache", "VAEConfig", "WanVAE", "abstract_params", "compile_decode_chunk", "decode", "decode_chunk", "encode",
    "init_decode_cache", "init_params", "load_checkpoint", "load_diffusers", "param_count", "patchify",
    "save_checkpoint", "save_diffusers", "unpatchify",
]

CHECKPOINT_KIND = "vae"
RUNTIME_FIELDS = {"dtype", "param_dtype", "attention_impl"}


def _boxed_init(config: VAEConfig):
  return lambda rng: WanVAE(config).init(rng, *example_inputs(config))


def init_params(config: VAEConfig, rng: jax.Array) -> dict:
  """Random params (LeCun-normal kernels, zero biases, unit norm scales)."""
  return model_params.init_params(_boxed_init(config), rng)


def abstract_params(config: VAEConfig) -> dict:
  return model_params.abstract_params(_boxed_init(config))


def param_count(config: VAEConfig) -> int:
  return model_params.param_count(_boxed_init(config))


def save_checkpoint(path: str | os.PathLike, config: VAEConfig, params: dict, *,
                    extras: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
  """Writes a planx VAE checkpoint directory."""
  return checkpoints.save_model(path, kind=CHECKPOINT_KIND, config=config.to_dict(), params=params, extras=extras,
                                overwrite=overwrite)


def load_checkpoint(path: str | os.PathLike, **config_overrides):
  """Reads a VAE checkpoint directory -> (config, params, meta); overrides may change run-time fields only."""
  return checkpoints.load_model(path, kind=CHECKPOINT_KIND, config_cls=VAEConfig, abstract_params_fn=abstract_params,
                                runtime_fields=RUNTIME_FIELDS, overrides=config_overrides)
