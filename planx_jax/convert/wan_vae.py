"""Conversion between diffusers' `AutoencoderKLWan` checkpoints (Wan2.1 and Wan2.2 VAEs) and planx VAE params.

The table is derived from the planx param tree, whose module names mirror diffusers' state dict
(`down_blocks_0/resnets_1/conv1/kernel` <-> `down_blocks.0.resnets.1.conv1.weight`); only the
layouts differ (PyTorch [out, in, kt, kh, kw] against [kh, kw, kt, in, out], see `vae_blocks.time_tap_conv`).
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from planx_jax.convert.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsReader, write_safetensors
from planx_jax.convert.table import Rule, check_tensors, identity, read_json_config, read_params, write_tensors
from planx_jax.io_utils import atomic_directory
from planx_jax.models.vae import WanVAE, example_inputs
from planx_jax.models.vae_config import VAEConfig

WEIGHTS_PREFIX = "diffusion_pytorch_model"
CLASS_NAME = "AutoencoderKLWan"

# config.json keys with no effect on planx's forward pass: metadata, dropout (inference only) and the
# stride fields, which planx derives from the architecture (`VAEConfig.scale_factor_*`).
_IGNORED_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "dropout",
                 "scale_factor_temporal", "scale_factor_spatial"}
# diffusers key -> VAEConfig field, where the names differ.
_RENAMED = {"temperal_downsample": "temporal_downsample"}
_ARCHITECTURE = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                 "temperal_downsample", "latents_mean", "latents_std", "is_residual", "in_channels", "out_channels",
                 "patch_size")


def config_from_diffusers(values: dict[str, Any], **overrides) -> VAEConfig:
  """VAEConfig from an `AutoencoderKLWan` config.json dict (absent keys take diffusers' defaults)."""
  name = values.get("_class_name", CLASS_NAME)
  if name != CLASS_NAME:
    raise ValueError(f"config.json describes {name!r}; VAE conversion expects {CLASS_NAME!r}")
  unknown = sorted(set(values) - set(_ARCHITECTURE) - _IGNORED_KEYS)
  if unknown:
    raise ValueError(f"config.json has keys {unknown} this converter does not know; refusing to guess")
  result = {_RENAMED.get(key, key): values[key] for key in _ARCHITECTURE if key in values}
  if result.get("patch_size", 1) is None:
    result["patch_size"] = 1  # diffusers: None = no patchify
  result.update(overrides)
  return VAEConfig.from_dict(result)


def config_to_diffusers(config: VAEConfig) -> dict[str, Any]:
  values = {key: getattr(config, _RENAMED.get(key, key)) for key in _ARCHITECTURE}
  values = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
  values.update(patch_size=None if config.patch_size == 1 else config.patch_size, dropout=0.0,
                scale_factor_temporal=config.scale_factor_temporal, scale_factor_spatial=config.scale_factor_spatial)
  return {"_class_name": CLASS_NAME, **values}


def _ref_name(path: tuple[str, ...]) -> str:
  """("decoder", "up_blocks_0", "upsampler", "conv", "kernel") -> "decoder.up_blocks.0.upsampler.resample.1.weight"."""
  parts = [re.sub(r"_(\d+)$", r".\1", part) for part in path[:-1]]
  parts = ["resample.1" if part == "conv" else part for part in parts]
  leaf = {"kernel": "weight", "scale": "gamma", "bias": "bias"}[path[-1]]
  return ".".join([*parts, leaf])


def _rule(path: tuple[str, ...], shape: tuple[int, ...]) -> Rule:
  ref = _ref_name(path)
  if path[-1] == "bias":
    return Rule(ref, path, shape, identity, identity, per_layer=False)
  if path[-1] == "scale":  # diffusers keeps broadcastable gammas: [C, 1, 1] in attention, [C, 1, 1, 1] elsewhere
    ref_shape = (*shape, 1, 1) if path[-2] == "norm" else (*shape, 1, 1, 1)
    return Rule(ref, path, ref_shape, lambda g: g.reshape(-1), lambda g, s=ref_shape: g.reshape(s), per_layer=False)
  if len(shape) == 5:  # causal conv [kh, kw, kt, in, out] <-> [out, in, kt, kh, kw]
    return Rule(ref, path, (shape[4], shape[3], shape[2], shape[0], shape[1]), lambda w: w.transpose(3, 4, 2, 1, 0),
                lambda w: w.transpose(4, 3, 2, 0, 1), per_layer=False)
  if len(shape) == 4:  # per-frame conv [kh, kw, in, out] <-> [out, in, kh, kw]
    return Rule(ref, path, (shape[3], shape[2], *shape[:2]), lambda w: w.transpose(2, 3, 1, 0),
                lambda w: w.transpose(3, 2, 0, 1), per_layer=False)
  # attention 1x1 conv as a dense [in, out] <-> [out, in, 1, 1]
  return Rule(ref, path, (shape[1], shape[0], 1, 1), lambda w: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None],
              per_layer=False)


def table(config: VAEConfig) -> list[Rule]:
  """One rule per tensor of an `AutoencoderKLWan` state dict with this config."""
  shapes = jax.eval_shape(lambda: WanVAE(config).init(jax.random.key(0), *example_inputs(config)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return [_rule(tuple(k.key for k in keys), tuple(leaf.shape)) for keys, leaf in flat]


def load_diffusers(path: str | os.PathLike, param_dtype="float32", **config_overrides) -> tuple[VAEConfig, dict]:
  """Reads an `AutoencoderKLWan` directory (config.json + safetensors, sharded or not) into planx params.

  Params are numpy arrays in `param_dtype` (None keeps the checkpoint's). Missing, unexpected or
  mis-shaped tensors are errors naming the tensor.
  """
  path = Path(path)
  config = config_from_diffusers(read_json_config(path), **config_overrides)
  reader = SafetensorsReader(path)
  rules = table(config)
  check_tensors(reader, rules, 1, what="VAE checkpoint")
  return config, read_params(reader, rules, 1, param_dtype)


def to_diffusers_state_dict(config: VAEConfig, params: dict, dtype=None) -> dict[str, np.ndarray]:
  return write_tensors(params, table(config), 1, dtype)


def save_diffusers(config: VAEConfig, params: dict, path: str | os.PathLike, *, dtype: str | None = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> None:
  """Writes a directory `AutoencoderKLWan.from_pretrained` loads (config.json with diffusers' key spellings)."""
  tensors = to_diffusers_state_dict(config, params, dtype)
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(tensors, tmp, max_shard_bytes=max_shard_bytes, prefix=WEIGHTS_PREFIX)
    (tmp / "config.json").write_text(json.dumps({**config_to_diffusers(config), "_diffusers_version": "0.42.1"},
                                                indent=2) + "\n")
