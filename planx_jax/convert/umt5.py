"""Conversion between transformers' umT5 checkpoints (`UMT5EncoderModel` directories) and planx T5 params.

One table (`param_table`) lists every encoder tensor with its planx path and layout
transform, walked by both directions. Decoders and LM heads are not converted.
"""

import json
import os
from typing import Any

import numpy as np

from planx_jax.convert.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsReader, write_safetensors
from planx_jax.convert.table import (Rule, check_tensors, identity, read_json_config, read_params, transpose,
                                     write_tensors)
from planx_jax.io_utils import atomic_directory
from planx_jax.models.layer_layout import stack_layers, to_layout
from planx_jax.models.t5_config import FEED_FORWARD_PROJ, T5Config

STACK = "layers"
SHARED = "shared.weight"
ENCODER_EMBED = "encoder.embed_tokens.weight"  # tied to `shared.weight`; some exports store this name instead
# Tensors of UMT5Model / UMT5ForConditionalGeneration that the encoder does not use.
IGNORED_PREFIXES = ("decoder.",)
IGNORED_KEYS = ("lm_head.weight",)


def config_from_hf(hf: dict[str, Any], **overrides) -> T5Config:
  """T5Config from a umT5 `config.json` dict (decoder fields are ignored); other architectures are errors."""
  model_type = hf.get("model_type")
  if model_type in ("t5", "mt5"):
    raise ValueError(f"config.json has model_type {model_type!r}: T5 / mT5 share layer 0's relative position "
                     "bias across layers; planx implements umT5 (a bias table per layer), model_type 'umt5'")
  if model_type != "umt5":
    raise ValueError(f"config.json has model_type {model_type!r}; umT5 conversion expects 'umt5'")
  if hf.get("is_decoder", False):
    raise ValueError("config.json sets is_decoder=true; planx converts the bidirectional umT5 encoder only")
  proj = hf.get("feed_forward_proj", FEED_FORWARD_PROJ)
  if proj != FEED_FORWARD_PROJ:
    raise ValueError(f"config.json feed_forward_proj is {proj!r}; planx implements umT5's {FEED_FORWARD_PROJ!r}")
  values = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["d_model"],
      d_kv=hf["d_kv"],
      num_heads=hf["num_heads"],
      d_ff=hf["d_ff"],
      num_layers=hf["num_layers"],
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
  )
  values.update(overrides)
  return T5Config.from_dict(values)


def config_to_hf(config: T5Config, torch_dtype: str = "float32") -> dict[str, Any]:
  """A `UMT5EncoderModel` config.json dict (decoder-side fields at umT5's values, unused by the encoder)."""
  return {
      "architectures": ["UMT5EncoderModel"],
      "model_type": "umt5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "num_heads": config.num_heads,
      "d_ff": config.d_ff,
      "num_layers": config.num_layers,
      "num_decoder_layers": config.num_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_eps,
      "feed_forward_proj": FEED_FORWARD_PROJ,
      "dense_act_fn": "gelu_new",
      "is_gated_act": True,
      "is_decoder": False,
      "is_encoder_decoder": True,
      "dropout_rate": 0.1,
      "initializer_factor": 1.0,
      "tie_word_embeddings": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "tokenizer_class": "T5Tokenizer",
      "torch_dtype": torch_dtype,
      "dtype": torch_dtype,
  }


def param_table(config: T5Config, embed_key: str = SHARED) -> list[Rule]:
  """Every tensor of a `UMT5EncoderModel` state dict (the embedding under `embed_key`)."""
  d, n, h, f = config.d_model, config.num_heads, config.d_kv, config.d_ff
  attn, ffn = "encoder.block.{i}.layer.0", "encoder.block.{i}.layer.1"

  def heads_in(w):  # [N*Dk, D] -> [D, N, Dk]
    return w.T.reshape(d, n, h)

  def heads_in_back(w):
    return w.reshape(d, n * h).T

  rules = [Rule(embed_key, ("embed", "embedding"), (config.vocab_size, d), identity, identity, per_layer=False)]
  for name in ("q", "k", "v"):
    rules.append(Rule(f"{attn}.SelfAttention.{name}.weight", (STACK, "attn", name, "kernel"), (n * h, d), heads_in,
                      heads_in_back))
  rules += [
      Rule(f"{attn}.SelfAttention.o.weight", (STACK, "attn", "o", "kernel"), (d, n * h),
           lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T),
      Rule(f"{attn}.SelfAttention.relative_attention_bias.weight", (STACK, "attn", "relative_attention_bias"),
           (config.relative_attention_num_buckets, n), identity, identity),
      Rule(f"{attn}.layer_norm.weight", (STACK, "attn_norm", "scale"), (d,), identity, identity),
      Rule(f"{ffn}.DenseReluDense.wi_0.weight", (STACK, "ffn", "wi_0", "kernel"), (f, d), transpose, transpose),
      Rule(f"{ffn}.DenseReluDense.wi_1.weight", (STACK, "ffn", "wi_1", "kernel"), (f, d), transpose, transpose),
      Rule(f"{ffn}.DenseReluDense.wo.weight", (STACK, "ffn", "wo", "kernel"), (d, f), transpose, transpose),
      Rule(f"{ffn}.layer_norm.weight", (STACK, "ffn_norm", "scale"), (d,), identity, identity),
      Rule("encoder.final_layer_norm.weight", ("final_norm", "scale"), (d,), identity, identity, per_layer=False),
  ]
  return rules


def load_hf(path: str | os.PathLike, param_dtype: str | np.dtype | None = "float32",
            **config_overrides) -> tuple[T5Config, dict]:
  """Reads a transformers umT5 directory (config.json + safetensors, sharded or not) into planx params.

  Takes a `UMT5EncoderModel` directory (what Wan's `text_encoder/` is), or a
  `UMT5Model` / `UMT5ForConditionalGeneration` one: of those only the encoder and the
  shared embedding are read; `decoder.*` tensors and `lm_head.weight` are ignored on
  purpose. The embedding is `shared.weight` or, failing that, its tied alias
  `encoder.embed_tokens.weight` (both present must be equal). Params are numpy arrays
  in `param_dtype` (None keeps the checkpoint's). Missing, unexpected or mis-shaped
  tensors are errors naming the tensor.
  """
  config = config_from_hf(read_json_config(path), **config_overrides)
  reader = SafetensorsReader(path)
  keys = reader.keys()
  embed_key = SHARED if SHARED in reader or ENCODER_EMBED not in reader else ENCODER_EMBED
  ignored = [k for k in keys if k.startswith(IGNORED_PREFIXES) or k in IGNORED_KEYS]
  if embed_key == SHARED and ENCODER_EMBED in reader:
    ignored.append(ENCODER_EMBED)
  rules = param_table(config, embed_key)
  check_tensors(reader, rules, config.num_layers, allowed_extra=ignored)
  if ENCODER_EMBED in ignored and not np.array_equal(reader.get(ENCODER_EMBED), reader.get(SHARED)):
    raise ValueError(f"checkpoint {path} has {ENCODER_EMBED} different from {SHARED}; umT5 ties them")
  params = read_params(reader, rules, config.num_layers, param_dtype)
  return config, to_layout(params, config.num_layers, config.scan_layers, STACK)


def to_hf_state_dict(config: T5Config, params: dict, dtype: str | np.dtype | None = None) -> dict[str, np.ndarray]:
  """planx params (either layer layout) -> {transformers name: numpy array}, optionally cast to `dtype`."""
  stacked = stack_layers(params, config.num_layers, STACK)
  return write_tensors(stacked, param_table(config), config.num_layers, None if dtype is None else np.dtype(dtype))


def save_hf(config: T5Config, params: dict, path: str | os.PathLike, *, dtype: str | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> None:
  """Writes a directory `UMT5EncoderModel.from_pretrained` loads (config.json + safetensors, sharded when large).

  The embedding is stored once, as `shared.weight` (transformers ties the encoder's to
  it). `dtype` casts tensors on export (default: the params' own dtype).
  """
  state = to_hf_state_dict(config, params, dtype)
  torch_dtype = str(state[SHARED].dtype)
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(state, tmp, max_shard_bytes=max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(config_to_hf(config, torch_dtype), indent=2) + "\n")
