"""Public entry points of the semantic planner: model, presets, params, conversion, checkpoints.

Gathers the pieces that live in `models/`, `convert/` and `sampling/` under the
names users import (`planx_jax.planner.load_hf`, ...). No logic of its own beyond
glue.
"""

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from planx_jax.convert.qwen2 import load_hf, save_hf
from planx_jax.model_spec import Loaded, ModelSpec
from planx_jax.models.planner import KVCache, Planner, PlannerOutput, init_cache
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.models.vocab import extend_vocab
from planx_jax.plan_tokens import PlanTokens
from planx_jax.sampling import SamplingConfig, generate, sample_plans

__all__ = [
    "KVCache", "PlanTokens", "Planner", "PlannerConfig", "PlannerOutput", "SPEC", "SamplingConfig", "abstract_params",
    "extend_vocab", "generate", "init_cache", "init_params", "load_checkpoint", "load_hf", "param_count",
    "param_logical_axes", "sample_plans", "save_checkpoint", "save_hf",
]


def _boxed_init(config: PlannerConfig):
  """Random params (normal(0.02) kernels, zero biases, unit norms)."""
  return lambda rng: Planner(config).init(rng, jnp.zeros((1, 1), jnp.int32))


SPEC = ModelSpec(kind="planner", config_cls=PlannerConfig, boxed_init=_boxed_init, layer_stack="layers",
                 runtime_fields=frozenset({"dtype", "param_dtype", "attention_impl", "scan_layers", "remat",
                                           "max_position_embeddings"}))
init_params, abstract_params = SPEC.init_params, SPEC.abstract_params
param_count, param_logical_axes = SPEC.param_count, SPEC.param_logical_axes


def save_checkpoint(path: str | os.PathLike, config: PlannerConfig, params: dict, *,
                    plan_tokens: PlanTokens | None = None, tokenizer=None, extras: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
  """Writes a planx planner checkpoint directory (what `planx plan` and training read), with its token layout."""
  meta = dict(extras or {})
  meta["plan_tokens"] = None if plan_tokens is None else plan_tokens.to_dict()
  return SPEC.save_checkpoint(path, config, params, tokenizer=tokenizer, extras=meta, overwrite=overwrite)


def load_checkpoint(path: str | os.PathLike, **config_overrides) -> Loaded:
  """Reads a planner checkpoint directory -> Loaded(config, params, meta), meta["plan_tokens"] a `PlanTokens` or None.

  `config_overrides` change run-time fields such as `dtype`, `attention_impl` or
  `scan_layers` (params are converted to the requested layer layout).
  """
  config, params, meta = SPEC.load_checkpoint(path, **config_overrides)
  stored = meta.get("plan_tokens")
  return Loaded(config, params, {**meta, "plan_tokens": None if stored is None else PlanTokens.from_dict(stored)})
