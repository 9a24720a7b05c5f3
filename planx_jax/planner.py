"""Public entry points of the semantic planner: model, presets, params, conversion, checkpoints.

Gathers the pieces that live in `models/`, `convert/` and `sampling/` under the
names users import (`planx_jax.planner.load_hf`, ...). No logic of its own beyond
glue.
"""

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from planx_jax import checkpoints
from planx_jax.convert.qwen2 import load_hf, save_hf
from planx_jax.models import layer_layout
from planx_jax.models import params as model_params
from planx_jax.models.planner import KVCache, Planner, PlannerOutput, init_cache
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.models.vocab import extend_vocab
from planx_jax.plan_tokens import PlanTokens
from planx_jax.sampling import SamplingConfig, generate, sample_plans

__all__ = [
    "KVCache", "PlanTokens", "Planner", "PlannerConfig", "PlannerOutput", "SamplingConfig", "abstract_params",
    "extend_vocab", "generate", "init_cache", "init_params", "load_checkpoint", "load_hf", "param_count",
    "param_logical_axes", "sample_plans", "save_checkpoint", "save_hf",
]

CHECKPOINT_KIND = "planner"
# Config fields that do not change the params, so a checkpoint can be loaded with other values.
RUNTIME_FIELDS = {"dtype", "param_dtype", "attention_impl", "scan_layers", "remat", "max_position_embeddings"}


def _boxed_init(config: PlannerConfig):
  return lambda rng: Planner(config).init(rng, jnp.zeros((1, 1), jnp.int32))


def init_params(config: PlannerConfig, rng: jax.Array) -> dict:
  """Random params (normal(0.02) kernels, zero biases, unit norms) as a plain nested dict."""
  return model_params.init_params(_boxed_init(config), rng)


def abstract_params(config: PlannerConfig) -> dict:
  """Param tree of `jax.ShapeDtypeStruct`, without allocating anything."""
  return model_params.abstract_params(_boxed_init(config))


def param_count(config: PlannerConfig) -> int:
  return model_params.param_count(_boxed_init(config))


def param_logical_axes(config: PlannerConfig) -> dict:
  """Param tree of `PartitionSpec`s over logical axis names ("layers", "embed", "heads", ...)."""
  return model_params.param_logical_axes(_boxed_init(config))


def save_checkpoint(path: str | os.PathLike, config: PlannerConfig, params: dict, *,
                    plan_tokens: PlanTokens | None = None, tokenizer=None, extras: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
  """Writes a planx planner checkpoint directory (what `planx plan` and training read)."""
  meta = dict(extras or {})
  meta["plan_tokens"] = None if plan_tokens is None else plan_tokens.to_dict()
  return checkpoints.save_model(path, kind=CHECKPOINT_KIND, config=config.to_dict(), params=params, extras=meta,
                                tokenizer=tokenizer, overwrite=overwrite)


def load_checkpoint(path: str | os.PathLike, **config_overrides):
  """Reads a planner checkpoint directory.

  Returns (config, params, plan_tokens or None, meta dict). `config_overrides`
  change run-time fields such as `dtype`, `attention_impl` or `scan_layers`
  (params are converted to the requested layer layout).
  """
  config, params, meta = checkpoints.load_model(path, kind=CHECKPOINT_KIND, config_cls=PlannerConfig,
                                                abstract_params_fn=abstract_params, runtime_fields=RUNTIME_FIELDS,
                                                overrides=config_overrides)
  params = layer_layout.to_layout(params, config.num_layers, config.scan_layers)
  plan_tokens = None if meta.get("plan_tokens") is None else PlanTokens.from_dict(meta["plan_tokens"])
  return config, params, plan_tokens, meta
