"""Conversion between transformers' `Qwen2ForCausalLM` checkpoints and planner params.

One table (`param_table`) lists every HF tensor with its planx path and the
transform between layouts; loading and saving both walk it, so the two
directions cannot drift. PyTorch Linear weights are [out, in]; planx kernels are
[in, heads, head_dim] / [in, out] and per-layer tensors are stacked on axis 0.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from planx_jax.convert.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsReader, write_safetensors
from planx_jax.convert.table import (Rule, check_tensors, identity, read_json_config, read_params, transpose,
                                     write_tensors)
from planx_jax.io_utils import atomic_directory
from planx_jax.models.layer_layout import stack_layers, to_layout
from planx_jax.models.planner_config import PlannerConfig

# HF config keys that do not change the forward pass; any other key with a
# non-default value is checked in `config_from_hf`.
_HF_IGNORED_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "max_window_layers",
    "sliding_window", "layer_types", "_name_or_path", "output_attentions", "output_hidden_states",
    "return_dict", "tokenizer_class", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type",
    "id2label", "label2id", "task_specific_params", "use_return_dict",
}


def config_from_hf(hf: dict[str, Any], **overrides) -> PlannerConfig:
  """PlannerConfig from a Qwen2 `config.json` dict; unsupported features are errors."""
  model_type = hf.get("model_type")
  if model_type != "qwen2":
    raise ValueError(f"config.json has model_type {model_type!r}; planner conversion expects 'qwen2'")
  if hf.get("use_sliding_window", False):
    raise ValueError("config.json sets use_sliding_window=true; the planner implements full attention only")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"config.json hidden_act is {act!r}; Qwen2's SwiGLU uses 'silu'")
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling")
  rope_type = rope.get("rope_type", "default")
  if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
    rope_type = scaling.get("rope_type", scaling.get("type"))
  if rope_type != "default":
    raise ValueError(f"config.json asks for rope_type {rope_type!r}; only default RoPE is implemented")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  heads = hf["num_attention_heads"]
  values = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rope_theta=float(theta),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 32768),
  )
  values.update(overrides)
  return PlannerConfig.from_dict(values)


def config_to_hf(config: PlannerConfig, torch_dtype: str = "float32") -> dict[str, Any]:
  """A Qwen2 `config.json` dict that transformers v4 and v5 both read."""
  return {
      "architectures": ["Qwen2ForCausalLM"],
      "model_type": "qwen2",
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": config.max_position_embeddings,
      "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "rope_scaling": None,
      "tie_word_embeddings": config.tie_word_embeddings,
      "use_sliding_window": False,
      "sliding_window": None,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
      "torch_dtype": torch_dtype,
      "dtype": torch_dtype,
  }


def param_table(config: PlannerConfig) -> list[Rule]:
  h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  n, k, d = config.num_heads, config.num_kv_heads, config.head_dim
  same = identity

  def heads_in(heads):  # [heads*D, H] <-> [H, heads, D]
    return (lambda w: w.T.reshape(h, heads, d), lambda w: w.reshape(h, heads * d).T)

  def heads_bias(heads):  # [heads*D] <-> [heads, D]
    return (lambda b: b.reshape(heads, d), lambda b: b.reshape(heads * d))

  attn = "model.layers.{i}.self_attn"
  rules = [Rule("model.embed_tokens.weight", ("embed", "embedding"), (v, h), same, same, per_layer=False)]
  for name, heads in (("q", n), ("k", k), ("v", k)):
    rules.append(Rule(f"{attn}.{name}_proj.weight", ("layers", "attn", name, "kernel"), (heads * d, h),
                      *heads_in(heads)))
    rules.append(Rule(f"{attn}.{name}_proj.bias", ("layers", "attn", name, "bias"), (heads * d,),
                      *heads_bias(heads)))
  rules += [
      Rule(f"{attn}.o_proj.weight", ("layers", "attn", "o", "kernel"), (h, n * d),
           lambda w: w.T.reshape(n, d, h), lambda w: w.reshape(n * d, h).T),
      Rule("model.layers.{i}.input_layernorm.weight", ("layers", "input_norm", "scale"), (h,), same, same),
      Rule("model.layers.{i}.post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale"), (h,),
           same, same),
      Rule("model.layers.{i}.mlp.gate_proj.weight", ("layers", "mlp", "gate", "kernel"), (f, h), transpose,
           transpose),
      Rule("model.layers.{i}.mlp.up_proj.weight", ("layers", "mlp", "up", "kernel"), (f, h), transpose,
           transpose),
      Rule("model.layers.{i}.mlp.down_proj.weight", ("layers", "mlp", "down", "kernel"), (h, f), transpose,
           transpose),
      Rule("model.norm.weight", ("final_norm", "scale"), (h,), same, same, per_layer=False),
  ]
  if not config.tie_word_embeddings:
    rules.append(Rule("lm_head.weight", ("lm_head", "kernel"), (v, h), transpose, transpose, per_layer=False))
  return rules


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  return read_json_config(path)


def load_hf(path: str | os.PathLike, param_dtype: str | np.dtype = "float32",
            **config_overrides) -> tuple[PlannerConfig, dict]:
  """Reads a `Qwen2ForCausalLM` directory (config.json + safetensors) into planx params.

  Params are numpy arrays cast to `param_dtype` (fp32 by default; None keeps the
  checkpoint's dtype). Missing, unexpected or wrongly shaped tensors are errors
  that name the tensor.
  """
  config = config_from_hf(read_hf_config(path), **config_overrides)
  reader = SafetensorsReader(path)
  rules = param_table(config)
  tied_head = config.tie_word_embeddings and "lm_head.weight" in reader
  check_tensors(reader, rules, config.num_layers, allowed_extra=("lm_head.weight",) if tied_head else ())
  params = read_params(reader, rules, config.num_layers, param_dtype)
  if tied_head and not np.array_equal(reader.get("lm_head.weight"), reader.get("model.embed_tokens.weight")):
    raise ValueError(f"checkpoint {path} ties word embeddings but its lm_head.weight differs from "
                     "model.embed_tokens.weight")
  return config, to_layout(params, config.num_layers, config.scan_layers)


def to_hf_state_dict(config: PlannerConfig, params: dict, dtype: str | np.dtype | None = None) -> dict:
  """planx params (either layer layout) -> {HF name: numpy array} (optionally cast to `dtype`)."""
  return write_tensors(stack_layers(params, config.num_layers), param_table(config), config.num_layers, dtype)


def save_hf(config: PlannerConfig, params: dict, path: str | os.PathLike, *, dtype: str | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, extra_config: dict | None = None,
            tokenizer=None, overwrite: bool = False) -> None:
  """Writes a directory `Qwen2ForCausalLM.from_pretrained` loads (config.json + safetensors).

  `dtype` casts tensors on export (default: the params' own dtype);
  `extra_config` adds keys such as token ids to config.json; `tokenizer` (an
  object with `save_pretrained`, or a directory of tokenizer files) is written
  alongside so `AutoTokenizer.from_pretrained(path)` works too.
  """
  state = to_hf_state_dict(config, params, None if dtype is None else np.dtype(dtype))
  torch_dtype = str(next(iter(state.values())).dtype)
  hf_config = config_to_hf(config, torch_dtype=torch_dtype)
  for key, value in (extra_config or {}).items():
    if key not in hf_config:
      hf_config[key] = value
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(state, tmp, max_shard_bytes=max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if isinstance(tokenizer, (str, os.PathLike)):
      for item in Path(tokenizer).iterdir():
        if item.is_file():
          shutil.copy2(item, tmp / item.name)
    elif tokenizer is not None:
      tokenizer.save_pretrained(tmp)
