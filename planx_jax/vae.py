"""Public entry points of the Wan video VAE: config and presets, params, encode / decode (whole clips or streamed
chunks), diffusers conversion, planx checkpoints.

Gathers `models/vae*.py` and `convert/wan_vae.py` under the names users import
(`planx_jax.vae.load_diffusers`, `planx_jax.vae.decode`, ...). Glue only.
"""

from planx_jax.convert.wan_vae import load_diffusers, save_diffusers
from planx_jax.model_spec import ModelSpec
from planx_jax.models.vae import WanVAE, example_inputs
from planx_jax.models.vae_coding import (DecodeCache, compile_decode_chunk, decode, decode_chunk, encode,
                                         init_decode_cache, patchify, unpatchify)
from planx_jax.models.vae_config import VAEConfig

__all__ = [
    "DecodeCache", "SPEC", "VAEConfig", "WanVAE", "abstract_params", "compile_decode_chunk", "decode", "decode_chunk",
    "encode", "init_decode_cache", "init_params", "load_checkpoint", "load_diffusers", "param_count",
    "param_logical_axes", "patchify", "save_checkpoint", "save_diffusers", "unpatchify",
]


def _boxed_init(config: VAEConfig):
  """Random params (LeCun-normal kernels, zero biases, unit norm scales)."""
  return lambda rng: WanVAE(config).init(rng, *example_inputs(config))


SPEC = ModelSpec(kind="vae", config_cls=VAEConfig, boxed_init=_boxed_init,
                 runtime_fields=frozenset({"dtype", "param_dtype", "attention_impl"}))
init_params, abstract_params = SPEC.init_params, SPEC.abstract_params
param_count, param_logical_axes = SPEC.param_count, SPEC.param_logical_axes
save_checkpoint, load_checkpoint = SPEC.save_checkpoint, SPEC.load_checkpoint
