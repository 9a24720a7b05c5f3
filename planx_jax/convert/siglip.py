"""Conversion between transformers' SigLIP vision towers (`SiglipVisionModel`, `SiglipModel`, Siglip2 NaFlex)
and planx `SigLIPVision` params.

One table (`param_table`) maps every HF tensor under a name prefix to a planx path, used in both
directions; the prefix lets Tar's `encoder.` / `decoder.vision_model.` towers reuse it. The pooling
head's packed `in_proj` tensors are split into q/k/v after reading and re-packed before writing.
"""

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from planx_jax.convert.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsReader, write_safetensors
from planx_jax.convert.table import (Rule, check_tensors, get_path, identity, read_json_config, read_params,
                                     transpose, write_tensors)
from planx_jax.io_utils import atomic_directory
from planx_jax.models.layer_layout import stack_layers, unstack_layers
from planx_jax.models.siglip_config import SigLIPConfig

HF_PREFIX = "vision_model."  # SiglipModel's vision tower; also what save_siglip_hf writes
STACK = "layers"
PACKED = "in_proj"  # planx-side name of the head's packed q/k/v while a state dict is read or written
TEXT_TOWER_PREFIX = "text_model."
CONTRASTIVE_KEYS = ("logit_scale", "logit_bias")

# transformers' defaults (SiglipVisionConfig / Siglip2VisionConfig) for keys a config.json may leave out.
_HF_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                    layer_norm_eps=1e-6, vision_use_head=True, num_patches=256)
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")
_VISION_TYPES = {"siglip_vision_model": False, "siglip2_vision_model": True}  # model_type -> naflex
_MODEL_TYPES = {"siglip": False, "siglip2": True}
_TEXT_TYPES = ("siglip_text_model", "siglip2_text_model")


# --- config ------------------------------------------------------------------
def _square(values: Mapping[str, Any], key: str) -> int:
  value = values.get(key, _HF_DEFAULTS[key])
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"config {key}={list(value)} is not square; SigLIPConfig supports square {key} only")
    value = value[0]
  return int(value)


def _vision_values(values: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
  """(the vision tower's config dict, naflex) from a vision-model or a full-model config dict."""
  model_type = values.get("model_type")
  if model_type in _VISION_TYPES:
    return values, _VISION_TYPES[model_type]
  if model_type in _MODEL_TYPES:
    naflex = _MODEL_TYPES[model_type]
    vision = values.get("vision_config") or {}
    inner = vision.get("model_type")
    expected = "siglip2_vision_model" if naflex else "siglip_vision_model"
    if inner not in (None, expected):
      raise ValueError(f"{model_type!r} config has a vision_config of model_type {inner!r}, expected {expected!r}")
    return vision, naflex
  if model_type in _TEXT_TYPES:
    raise ValueError(f"config has model_type {model_type!r}: a text tower; SigLIP conversion needs a vision tower")
  known = sorted({*_VISION_TYPES, *_MODEL_TYPES})
  raise ValueError(f"config has model_type {model_type!r}; SigLIP conversion expects one of {known}")


def config_from_hf(values: Mapping[str, Any], **overrides) -> SigLIPConfig:
  """SigLIPConfig from a transformers config dict: a Siglip(2)VisionConfig or a Siglip(2)Config with a
  `vision_config` (model_type "siglip2" means the NaFlex tower; its num_patches gives the table side)."""
  vision, naflex = _vision_values(values)
  act = vision.get("hidden_act", _HF_DEFAULTS["hidden_act"])
  if act not in _TANH_GELU:
    raise ValueError(f"vision config hidden_act is {act!r}; SigLIP uses the tanh GELU ({', '.join(_TANH_GELU)})")

  def get(key):
    return vision.get(key, _HF_DEFAULTS[key])

  patch = _square(vision, "patch_size")
  result = dict(hidden_size=int(get("hidden_size")), intermediate_size=int(get("intermediate_size")),
                num_layers=int(get("num_hidden_layers")), num_heads=int(get("num_attention_heads")), patch_size=patch,
                num_channels=int(get("num_channels")), layer_norm_eps=float(get("layer_norm_eps")),
                use_head=bool(get("vision_use_head")), naflex=naflex)
  if naflex:
    num_patches = int(get("num_patches"))
    side = round(num_patches**0.5)
    if side * side != num_patches:
      raise ValueError(f"Siglip2 num_patches={num_patches} is not a square; the position table must be a grid")
    result.update(position_embedding_size=side, image_size=side * patch)
  else:
    result.update(image_size=_square(vision, "image_size"))
  result.update(overrides)
  return SigLIPConfig.from_dict(result)


def config_to_hf(config: SigLIPConfig) -> dict[str, Any]:
  """A `SiglipVisionModel` (or, for NaFlex, `Siglip2VisionModel`) config.json dict."""
  values = {
      "architectures": ["Siglip2VisionModel" if config.naflex else "SiglipVisionModel"],
      "model_type": "siglip2_vision_model" if config.naflex else "siglip_vision_model",
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_channels": config.num_channels,
      "patch_size": config.patch_size,
      "hidden_act": "gelu_pytorch_tanh",
      "layer_norm_eps": config.layer_norm_eps,
      "attention_dropout": 0.0,
      "vision_use_head": config.use_head,
  }
  if config.naflex:
    values["num_patches"] = config.position_embedding_size**2
  else:
    values["image_size"] = config.image_size
  return values


# --- table -------------------------------------------------------------------
def _linear(ref: str, path: tuple[str, ...], n_in: int, n_out: int, per_layer: bool) -> list[Rule]:
  """torch Linear (weight [out, in], bias [out]) <-> {kernel [in, out], bias [out]}."""
  return [Rule(f"{ref}.weight", (*path, "kernel"), (n_out, n_in), transpose, transpose, per_layer),
          Rule(f"{ref}.bias", (*path, "bias"), (n_out,), identity, identity, per_layer)]


def _layer_norm(ref: str, path: tuple[str, ...], width: int, per_layer: bool) -> list[Rule]:
  return [Rule(f"{ref}.weight", (*path, "scale"), (width,), identity, identity, per_layer),
          Rule(f"{ref}.bias", (*path, "bias"), (width,), identity, identity, per_layer)]


def _out_proj(ref: str, path: tuple[str, ...], config: SigLIPConfig, per_layer: bool) -> list[Rule]:
  """out_proj weight [H, N*Dh] <-> o kernel [N, Dh, H]; bias [H]."""
  width, n, d = config.hidden_size, config.num_heads, config.head_dim
  return [Rule(f"{ref}.weight", (*path, "kernel"), (width, n * d), lambda w: w.T.reshape(n, d, width),
               lambda w: w.reshape(n * d, width).T, per_layer),
          Rule(f"{ref}.bias", (*path, "bias"), (width,), identity, identity, per_layer)]


def _mlp(ref: str, path: tuple[str, ...], config: SigLIPConfig, per_layer: bool) -> list[Rule]:
  width, inner = config.hidden_size, config.intermediate_size
  return [*_linear(f"{ref}.fc1", (*path, "fc1"), width, inner, per_layer),
          *_linear(f"{ref}.fc2", (*path, "fc2"), inner, width, per_layer)]


def _patch_embedding(ref: str, config: SigLIPConfig) -> list[Rule]:
  """v1: Conv2d weight [H, C, p, p] <-> kernel [p, p, C, H]. NaFlex: Linear [H, p*p*C] <-> [p*p*C, H]."""
  width, p, c = config.hidden_size, config.patch_size, config.num_channels
  path = ("patch_embedding",)
  if config.naflex:
    return _linear(ref, path, config.patch_dim, width, False)
  return [Rule(f"{ref}.weight", (*path, "kernel"), (width, c, p, p), lambda w: w.transpose(2, 3, 1, 0),
               lambda w: w.transpose(3, 2, 0, 1), per_layer=False),
          Rule(f"{ref}.bias", (*path, "bias"), (width,), identity, identity, per_layer=False)]


def param_table(config: SigLIPConfig, prefix: str = HF_PREFIX) -> list[Rule]:
  """Every tensor of a SigLIP vision tower, named `prefix + <transformers name>`.

  Per-layer rules (ref_key with "{i}") target the stacked path ("layers", ...); the head's
  `attention.in_proj_weight` [3H, H] / `in_proj_bias` [3H] target ("head", "attention", "in_proj")
  as [H, 3, N, Dh] / [3, N, Dh]. `params_from_state_dict` / `params_to_state_dict` turn those into
  the module's `layers_<i>` and q/k/v params.
  """
  width, n, d = config.hidden_size, config.num_heads, config.head_dim
  layer = f"{prefix}encoder.layers.{{i}}"
  rules = [
      *_patch_embedding(f"{prefix}embeddings.patch_embedding", config),
      Rule(f"{prefix}embeddings.position_embedding.weight", ("position_embedding",), (config.num_positions, width),
           identity, identity, per_layer=False),
      *_layer_norm(f"{layer}.layer_norm1", (STACK, "layer_norm1"), width, True),
  ]
  for name in ("q", "k", "v"):
    rules += [Rule(f"{layer}.self_attn.{name}_proj.weight", (STACK, "self_attn", name, "kernel"), (width, width),
                   lambda w: w.T.reshape(width, n, d), lambda w: w.reshape(width, n * d).T),
              Rule(f"{layer}.self_attn.{name}_proj.bias", (STACK, "self_attn", name, "bias"), (width,),
                   lambda b: b.reshape(n, d), lambda b: b.reshape(n * d))]
  rules += [
      *_out_proj(f"{layer}.self_attn.out_proj", (STACK, "self_attn", "o"), config, True),
      *_layer_norm(f"{layer}.layer_norm2", (STACK, "layer_norm2"), width, True),
      *_mlp(f"{layer}.mlp", (STACK, "mlp"), config, True),
      *_layer_norm(f"{prefix}post_layernorm", ("post_layernorm",), width, False),
  ]
  if config.use_head:
    head = f"{prefix}head"
    rules += [
        Rule(f"{head}.probe", ("head", "probe"), (1, 1, width), identity, identity, per_layer=False),
        Rule(f"{head}.attention.in_proj_weight", ("head", "attention", PACKED, "kernel"), (3 * width, width),
             lambda w: w.T.reshape(width, 3, n, d), lambda w: w.reshape(width, 3 * width).T, per_layer=False),
        Rule(f"{head}.attention.in_proj_bias", ("head", "attention", PACKED, "bias"), (3 * width,),
             lambda b: b.reshape(3, n, d), lambda b: b.reshape(3 * width), per_layer=False),
        *_out_proj(f"{head}.attention.out_proj", ("head", "attention", "o"), config, False),
        *_layer_norm(f"{head}.layernorm", ("head", "layernorm"), width, False),
        *_mlp(f"{head}.mlp", ("head", "mlp"), config, False),
    ]
  return rules


def _split_head(params: dict) -> dict:
  """("head", "attention", "in_proj") [H, 3, N, Dh] / [3, N, Dh] -> q, k, v entries."""
  attn = params.get("head", {}).get("attention")
  if attn is None or PACKED not in attn:
    return params
  packed = attn.pop(PACKED)
  for j, name in enumerate(("q", "k", "v")):
    attn[name] = {"kernel": np.ascontiguousarray(packed["kernel"][:, j]),
                  "bias": np.ascontiguousarray(packed["bias"][j])}
  return params


def _pack_head(params: dict) -> dict:
  """The inverse of `_split_head` on a shallow copy (params are not modified)."""
  if "head" not in params:
    return params
  attn = dict(get_path(params, ("head", "attention")))
  parts = [get_path(params, ("head", "attention", name)) for name in ("q", "k", "v")]
  for name in ("q", "k", "v"):
    del attn[name]
  attn[PACKED] = {"kernel": np.stack([np.asarray(p["kernel"]) for p in parts], axis=1),  # [H, 3, N, Dh]
                  "bias": np.stack([np.asarray(p["bias"]) for p in parts], axis=0)}  # [3, N, Dh]
  return {**params, "head": {**params["head"], "attention": attn}}


# --- state dicts ---------------------------------------------------------------
class _Tensors:
  """The reader interface `table.check_tensors` / `read_params` use, over keys under `prefix` only."""

  def __init__(self, keys: Iterable[str], shape: Callable[[str], tuple], get: Callable[[str], np.ndarray],
               path: str, prefix: str):
    self._keys = sorted(k for k in keys if k.startswith(prefix))
    self.shape, self.get, self.path = shape, get, path

  def keys(self) -> list[str]:
    return self._keys


def _read(config: SigLIPConfig, source: _Tensors, prefix: str, param_dtype, what: str) -> dict:
  rules = param_table(config, prefix)
  if not source.keys():
    raise ValueError(f"{what} {source.path} has no tensors under prefix {prefix!r} (expected e.g. "
                     f"{rules[0].ref_key!r})")
  check_tensors(source, rules, config.num_layers, what=what)
  params = read_params(source, rules, config.num_layers, param_dtype)
  return _split_head(unstack_layers(params, config.num_layers, STACK))


def params_from_state_dict(config: SigLIPConfig, tensors: Mapping[str, np.ndarray], prefix: str = HF_PREFIX,
                           param_dtype: str | None = None) -> dict:
  """planx params (numpy) from a {name: array} state dict in transformers' layout.

  Only keys starting with `prefix` are read (e.g. "encoder." / "decoder.vision_model." in Tar's
  state dict); among them, missing, unexpected or mis-shaped tensors are errors naming the tensor.
  `param_dtype` None keeps the tensors' dtype.
  """
  source = _Tensors(tensors.keys(), lambda k: tuple(np.shape(tensors[k])), lambda k: np.asarray(tensors[k]),
                    "state dict", prefix)
  return _read(config, source, prefix, param_dtype, "SigLIP")


def params_to_state_dict(config: SigLIPConfig, params: dict, prefix: str = HF_PREFIX,
                         dtype: str | None = None) -> dict[str, np.ndarray]:
  """planx params (unrolled `layers_<i>`, numpy or JAX) -> {prefix + transformers name: numpy array}."""
  stacked = _pack_head(stack_layers(params, config.num_layers, STACK))
  tensors = write_tensors(stacked, param_table(config, prefix), config.num_layers, dtype)
  return {key: np.ascontiguousarray(value) for key, value in tensors.items()}


# --- directories ---------------------------------------------------------------
def _tower_prefix(reader: SafetensorsReader) -> str:
  """"vision_model." (SiglipModel, and vision checkpoints saved by transformers v4) or "" (v5 vision saves)."""
  for prefix in (HF_PREFIX, ""):
    if f"{prefix}embeddings.position_embedding.weight" in reader:
      return prefix
  raise ValueError(f"{reader.path} has no SigLIP vision tower (no 'vision_model.embeddings.position_embedding.weight'"
                   " or 'embeddings.position_embedding.weight')")


def load_siglip_hf(path: str | os.PathLike, param_dtype: str | None = "float32") -> tuple[SigLIPConfig, dict]:
  """(config, params) from a transformers SiglipVisionModel / SiglipModel (or Siglip2) directory.

  config.json plus one safetensors file or shards with an index. A full model's text tower
  (`text_model.*`) and `logit_scale` / `logit_bias` are skipped; any other tensor outside
  the vision tower is an error. Params are numpy arrays in `param_dtype` (None keeps the checkpoint's).
  """
  path = Path(path)
  config = config_from_hf(read_json_config(path))
  reader = SafetensorsReader(path)
  prefix = _tower_prefix(reader)
  outside = [k for k in reader.keys() if not k.startswith(prefix)]
  stray = [k for k in outside if not (k.startswith(TEXT_TOWER_PREFIX) or k in CONTRASTIVE_KEYS)]
  if stray:
    raise ValueError(f"checkpoint {path} has tensors {stray[:5]} outside the vision and text towers")
  source = _Tensors(reader.keys(), reader.shape, reader.get, str(path), prefix)
  return config, _read(config, source, prefix, param_dtype, "checkpoint")


def save_siglip_hf(config: SigLIPConfig, params: dict, path: str | os.PathLike, *, dtype: str | None = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> None:
  """Writes a directory `transformers.SiglipVisionModel.from_pretrained` (Siglip2VisionModel for NaFlex) loads:
  config.json + safetensors named `vision_model.*`, as HF hub vision checkpoints are."""
  tensors = params_to_state_dict(config, params, HF_PREFIX, dtype)
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(tensors, tmp, max_shard_bytes=max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
