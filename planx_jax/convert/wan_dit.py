"""Conversion between diffusers' `WanTransformer3DModel` checkpoints and planx DiT params.

One table per direction-agnostic part: the base Wan weights (diffusers names) and the
Plan-X semantic branch, which diffusers has no module for; it travels in its own
safetensors file, `semantic_branch.safetensors`, with the names listed in
`semantic_table` (PyTorch [out, in] layout, like the rest).
"""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from planx_jax.convert.safetensors_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsReader, write_safetensors
from planx_jax.convert.table import (Rule, check_tensors, identity, read_json_config, read_params, transpose,
                                     write_tensors)
from planx_jax.io_utils import atomic_directory
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.layer_layout import stack_layers, to_layout

WEIGHTS_PREFIX = "diffusion_pytorch_model"
SEMANTIC_FILE = "semantic_branch.safetensors"
SEMANTIC_CONFIG_FILE = "semantic_branch.json"
STACK = "blocks"

# diffusers config keys with no effect on the forward pass.
_IGNORED_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "pos_embed_seq_len"}


def config_from_diffusers(values: dict[str, Any], **overrides) -> DiTConfig:
  """DiTConfig from a `WanTransformer3DModel` config.json dict; unsupported variants are errors."""
  name = values.get("_class_name", "WanTransformer3DModel")
  if name != "WanTransformer3DModel":
    raise ValueError(f"config.json describes {name!r}; DiT conversion expects 'WanTransformer3DModel'")
  for key in ("image_dim", "added_kv_proj_dim"):
    if values.get(key) is not None:
      raise ValueError(f"config.json sets {key}={values[key]} (Wan2.1 I2V image branch), which planx does not "
                       "implement; Wan2.2 TI2V conditions on the first frame through its latents instead")
  qk_norm = values.get("qk_norm", "rms_norm_across_heads")
  if qk_norm != "rms_norm_across_heads":
    raise ValueError(f"config.json qk_norm is {qk_norm!r}; planx implements 'rms_norm_across_heads'")
  known = {"patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
           "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
           "added_kv_proj_dim", "rope_max_seq_len", "window_size"} | _IGNORED_KEYS
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"config.json has keys {unknown} this converter does not know; refusing to guess")
  result = dict(
      patch_size=tuple(values.get("patch_size", (1, 2, 2))),
      num_heads=values["num_attention_heads"],
      head_dim=values["attention_head_dim"],
      in_channels=values["in_channels"],
      out_channels=values.get("out_channels") or values["in_channels"],
      text_dim=values["text_dim"],
      freq_dim=values["freq_dim"],
      ffn_dim=values["ffn_dim"],
      num_layers=values["num_layers"],
      eps=float(values.get("eps", 1e-6)),
      cross_attn_norm=bool(values.get("cross_attn_norm", True)),
      rope_max_seq_len=values.get("rope_max_seq_len", 1024),
  )
  result.update(overrides)
  return DiTConfig.from_dict(result)


def config_to_diffusers(config: DiTConfig) -> dict[str, Any]:
  return {
      "_class_name": "WanTransformer3DModel",
      "patch_size": list(config.patch_size),
      "num_attention_heads": config.num_heads,
      "attention_head_dim": config.head_dim,
      "in_channels": config.in_channels,
      "out_channels": config.out_channels,
      "text_dim": config.text_dim,
      "freq_dim": config.freq_dim,
      "ffn_dim": config.ffn_dim,
      "num_layers": config.num_layers,
      "cross_attn_norm": config.cross_attn_norm,
      "qk_norm": "rms_norm_across_heads",
      "eps": config.eps,
      "image_dim": None,
      "added_kv_proj_dim": None,
      "rope_max_seq_len": config.rope_max_seq_len,
  }


def _linear(ref: str, path: tuple[str, ...], n_in: int, n_out: int, per_layer: bool) -> list[Rule]:
  """A torch Linear (weight [out, in], bias [out]) <-> planx {kernel [in, out], bias [out]}."""
  return [Rule(f"{ref}.weight", (*path, "kernel"), (n_out, n_in), transpose, transpose, per_layer),
          Rule(f"{ref}.bias", (*path, "bias"), (n_out,), identity, identity, per_layer)]


def _attention(ref: str, path: tuple[str, ...], config: DiTConfig, names=("q", "k", "v")) -> list[Rule]:
  """q/k/v [N*Dh, D] <-> [D, N, Dh] (bias [N, Dh]); the output projection and the full-width norms."""
  dim, n, d = config.dim, config.num_heads, config.head_dim
  torch_names = {"q": "to_q", "k": "to_k", "v": "to_v", "k_sem": "k_sem", "v_sem": "v_sem"}
  rules = []
  for name in names:
    rules += [
        Rule(f"{ref}.{torch_names[name]}.weight", (*path, name, "kernel"), (n * d, dim),
             lambda w: w.T.reshape(dim, n, d), lambda w: w.reshape(dim, n * d).T),
        Rule(f"{ref}.{torch_names[name]}.bias", (*path, name, "bias"), (n * d,),
             lambda b: b.reshape(n, d), lambda b: b.reshape(n * d)),
    ]
  return rules


def base_table(config: DiTConfig) -> list[Rule]:
  """Every tensor of a diffusers `WanTransformer3DModel` state dict."""
  dim, n, d = config.dim, config.num_heads, config.head_dim
  pt, ph, pw = config.patch_size
  c_in, c_out = config.in_channels, config.out_channels
  rules = [
      Rule("patch_embedding.weight", ("patch_embedding", "kernel"), (dim, c_in, pt, ph, pw),
           lambda w: w.transpose(2, 3, 4, 1, 0), lambda w: w.transpose(4, 3, 0, 1, 2), per_layer=False),
      Rule("patch_embedding.bias", ("patch_embedding", "bias"), (dim,), identity, identity, per_layer=False),
      *_linear("condition_embedder.time_embedder.linear_1", ("time_embedding", "linear_1"), config.freq_dim, dim,
               False),
      *_linear("condition_embedder.time_embedder.linear_2", ("time_embedding", "linear_2"), dim, dim, False),
      Rule("condition_embedder.time_proj.weight", ("time_projection", "kernel"), (6 * dim, dim),
           lambda w: w.T.reshape(dim, 6, dim), lambda w: w.reshape(dim, 6 * dim).T, per_layer=False),
      Rule("condition_embedder.time_proj.bias", ("time_projection", "bias"), (6 * dim,),
           lambda b: b.reshape(6, dim), lambda b: b.reshape(6 * dim), per_layer=False),
      *_linear("condition_embedder.text_embedder.linear_1", ("text_embedding", "linear_1"), config.text_dim, dim,
               False),
      *_linear("condition_embedder.text_embedder.linear_2", ("text_embedding", "linear_2"), dim, dim, False),
      Rule("scale_shift_table", ("head_scale_shift_table",), (1, 2, dim), lambda t: t[0], lambda t: t[None],
           per_layer=False),
      Rule("proj_out.weight", ("head", "kernel"), (pt * ph * pw * c_out, dim),
           lambda w: w.T.reshape(dim, pt, ph, pw, c_out), lambda w: w.reshape(dim, -1).T, per_layer=False),
      Rule("proj_out.bias", ("head", "bias"), (pt * ph * pw * c_out,), lambda b: b.reshape(pt, ph, pw, c_out),
           lambda b: b.reshape(-1), per_layer=False),
  ]
  block = "blocks.{i}"
  for torch_name, name in (("attn1", "self_attn"), ("attn2", "cross_attn")):
    rules += _attention(f"{block}.{torch_name}", (STACK, name), config)
    rules += [
        Rule(f"{block}.{torch_name}.to_out.0.weight", (STACK, name, "o", "kernel"), (dim, n * d),
             lambda w: w.T.reshape(n, d, dim), lambda w: w.reshape(n * d, dim).T),
        Rule(f"{block}.{torch_name}.to_out.0.bias", (STACK, name, "o", "bias"), (dim,), identity, identity),
        Rule(f"{block}.{torch_name}.norm_q.weight", (STACK, name, "norm_q", "scale"), (n * d,), identity, identity),
        Rule(f"{block}.{torch_name}.norm_k.weight", (STACK, name, "norm_k", "scale"), (n * d,), identity, identity),
    ]
  if config.cross_attn_norm:
    rules += [
        Rule(f"{block}.norm2.weight", (STACK, "cross_attn_norm_scale"), (dim,), identity, identity),
        Rule(f"{block}.norm2.bias", (STACK, "cross_attn_norm_bias"), (dim,), identity, identity),
    ]
  rules += [
      *_linear(f"{block}.ffn.net.0.proj", (STACK, "ffn_1"), dim, config.ffn_dim, True),
      *_linear(f"{block}.ffn.net.2", (STACK, "ffn_2"), config.ffn_dim, dim, True),
      Rule(f"{block}.scale_shift_table", (STACK, "scale_shift_table"), (1, 6, dim), lambda t: t[0],
           lambda t: t[None]),
  ]
  return rules


def semantic_table(config: DiTConfig) -> list[Rule]:
  """The Plan-X semantic branch's tensors, named in diffusers' style (file `semantic_branch.safetensors`).

  `semantic_embedder.linear_1/linear_2` (the 2-layer GELU-tanh MLP), and per block
  `blocks.N.attn2.k_sem`, `blocks.N.attn2.v_sem` (Linear [out, in] + bias) and
  `blocks.N.attn2.norm_k_sem.weight` (full-width RMSNorm).
  """
  if config.semantic_in_dim is None:
    return []
  dim, n, d = config.dim, config.num_heads, config.head_dim
  return [
      *_linear("semantic_embedder.linear_1", ("semantic_embedding", "linear_1"), config.semantic_in_dim, dim, False),
      *_linear("semantic_embedder.linear_2", ("semantic_embedding", "linear_2"), dim, dim, False),
      *_attention("blocks.{i}.attn2", (STACK, "cross_attn"), config, names=("k_sem", "v_sem")),
      Rule("blocks.{i}.attn2.norm_k_sem.weight", (STACK, "cross_attn", "norm_k_sem", "scale"), (n * d,), identity,
           identity),
  ]


def load_diffusers(path: str | os.PathLike, param_dtype="float32", **config_overrides) -> tuple[DiTConfig, dict]:
  """Reads a diffusers Wan transformer directory (+ a semantic branch file if present) into planx params.

  Params are numpy arrays in `param_dtype` (None keeps the checkpoint's). Missing,
  unexpected or mis-shaped tensors are errors naming the tensor.
  """
  path = Path(path)
  values = read_json_config(path)
  semantic = {"semantic_in_dim": None}
  if (path / SEMANTIC_CONFIG_FILE).exists():
    saved = json.loads((path / SEMANTIC_CONFIG_FILE).read_text())
    semantic = {"semantic_in_dim": saved["semantic_in_dim"], "semantic_rope": saved.get("semantic_rope", True)}
  config = config_from_diffusers(values, **{**semantic, **config_overrides})
  reader = SafetensorsReader(path, exclude=(SEMANTIC_FILE,))
  check_tensors(reader, base_table(config), config.num_layers)
  params = read_params(reader, base_table(config), config.num_layers, param_dtype)
  if config.semantic_in_dim is not None:
    if not (path / SEMANTIC_FILE).exists():
      raise FileNotFoundError(f"{path} has {SEMANTIC_CONFIG_FILE} but no {SEMANTIC_FILE}")
    semantic = SafetensorsReader(path / SEMANTIC_FILE)
    check_tensors(semantic, semantic_table(config), config.num_layers, what="semantic branch file")
    read_params(semantic, semantic_table(config), config.num_layers, param_dtype, params=params)
  return config, to_layout(params, config.num_layers, config.scan_layers, STACK)


def to_diffusers_state_dict(config: DiTConfig, params: dict, dtype=None) -> tuple[dict, dict]:
  """planx params -> (base diffusers state dict, semantic-branch state dict); numpy arrays."""
  params = stack_layers(params, config.num_layers, STACK)
  base = write_tensors(params, base_table(config), config.num_layers, dtype)
  semantic = write_tensors(params, semantic_table(config), config.num_layers, dtype)
  return base, semantic


def save_diffusers(config: DiTConfig, params: dict, path: str | os.PathLike, *, dtype: str | None = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> None:
  """Writes a directory `WanTransformer3DModel.from_pretrained` loads; the semantic branch, if any, goes to
  `semantic_branch.safetensors` + `semantic_branch.json` alongside (diffusers ignores both)."""
  base, semantic = to_diffusers_state_dict(config, params, dtype)
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(base, tmp, max_shard_bytes=max_shard_bytes, prefix=WEIGHTS_PREFIX)
    (tmp / "config.json").write_text(json.dumps({**config_to_diffusers(config), "_diffusers_version": "0.42.1"},
                                                indent=2) + "\n")
    if semantic:
      save_file({k: np.ascontiguousarray(v) for k, v in semantic.items()}, str(tmp / SEMANTIC_FILE),
                metadata={"format": "pt"})
      (tmp / SEMANTIC_CONFIG_FILE).write_text(json.dumps({"semantic_in_dim": config.semantic_in_dim,
                                                          "semantic_rope": config.semantic_rope}) + "\n")


