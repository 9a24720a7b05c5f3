"""Tar's TA-Tok checkpoint (`ta_tok.pth`: {"model": {"args", "sd"}}) <-> planx TA-Tok config and params.

Reads the pickle with `torch.load(weights_only=True)` only (tensors and plain containers;
Tar's EasyDict args are read as plain mappings). D, K, depths and widths come from the
tensors; what tensors cannot tell (head counts) comes from the teacher's name or the
caller. Exports back to Tar's names as a `.pth` Tar loads, or as safetensors + args.json.
"""

import collections
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from planx_jax.convert import siglip as siglip_convert
from planx_jax.convert.safetensors_io import SafetensorsReader, write_safetensors
from planx_jax.io_utils import atomic_directory
from planx_jax.models.siglip_config import SigLIPConfig
from planx_jax.models.tatok_config import SO400M_TEACHER, TATokConfig

log = logging.getLogger("planx.convert.tatok")

ENCODER_PREFIX = "encoder."
DECODER_PREFIX = "decoder.vision_model."
IGNORED_PREFIXES = ("teacher.",)  # the distillation teacher, unused at inference
ARGS_FILE = "args.json"
TENSORS_NAME = "ta_tok"
KNOWN_TEACHERS = {SO400M_TEACHER: SigLIPConfig.siglip2_so400m_patch14_384}
TAR_DECODER_HEADS = 12  # Tar builds its decoder from Siglip2VisionConfig defaults (12 heads)


def _torch():
  try:
    import torch
  except ImportError as err:
    raise ImportError("reading or writing a Tar .pth needs PyTorch: pip install torch (CPU build is enough)") from err
  return torch


def read_pth(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """`ta_tok.pth` -> (args, state dict as numpy), with `weights_only=True` (never arbitrary unpickling)."""
  torch = _torch()
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Tar checkpoint {path} does not exist")
  # Tar's configs are EasyDicts: a dict subclass holding data only. Read them as OrderedDicts;
  # any other non-tensor class is still refused.
  with torch.serialization.safe_globals([(collections.OrderedDict, "easydict.EasyDict")]):
    try:
      ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
      reason = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
      found = re.search(r"(Unsupported global|Can only \w+).*", str(err))
      raise ValueError(
          f"{path} holds Python objects other than tensors and plain containers, so torch.load(weights_only=True) "
          f"refused it ({found.group(0) if found else reason}). planx_jax never unpickles arbitrary objects; "
          "re-save the checkpoint with plain dicts of tensors.") from None
    except RuntimeError as err:
      if "mmap" not in str(err):
        raise
      log.info("%s is in torch's legacy (non-zip) format; loading it without mmap", path)
      ckpt = torch.load(path, map_location="cpu", weights_only=True)
  model = ckpt.get("model") if isinstance(ckpt, Mapping) else None
  if not isinstance(model, Mapping) or "sd" not in model:
    raise ValueError(f"{path} is not a Tar TA-Tok checkpoint: expected {{'model': {{'args': ..., 'sd': ...}}}}")
  state = {}
  for key, value in model["sd"].items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: state entry {key!r} is a {type(value).__name__}, not a tensor")
    state[key] = _to_numpy(torch, value)
  return _plain(model.get("args") or {}), state


def _to_numpy(torch, tensor) -> np.ndarray:
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    import ml_dtypes

    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _to_tensor(torch, value: np.ndarray):
  value = np.ascontiguousarray(value)
  if value.dtype.name == "bfloat16":
    return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(value)


def _plain(value):
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _regularizer_args(args: Mapping[str, Any]) -> dict[str, Any]:
  bottleneck = args.get("bottleneck") or {}
  regularizer = (bottleneck.get("args") or {}).get("regularizer") or {}
  return dict(regularizer.get("args") or {})


def _layer_count(state: Mapping[str, np.ndarray], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
  found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
  if not found:
    raise ValueError(f"checkpoint has no {prefix}encoder.layers.* tensors")
  if found != set(range(len(found))):
    raise ValueError(f"{prefix}encoder.layers indices are not contiguous: {sorted(found)}")
  return len(found)


def _need(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"TA-Tok checkpoint is missing tensor {key!r}")
  return state[key]


def config_from_tar(args: Mapping[str, Any], state: Mapping[str, np.ndarray], *, encoder_heads: int | None = None,
                    decoder_heads: int | None = None) -> TATokConfig:
  """Config from Tar's args and tensor shapes. Head counts: the teacher's preset, else `encoder_heads`."""
  embedding = _need(state, "bottleneck.regularizer.embedding.weight")
  if embedding.ndim != 2:
    raise ValueError(f"bottleneck.regularizer.embedding.weight must be [K, D], got {embedding.shape}")
  codebook_size, code_dim = embedding.shape
  reg = _regularizer_args(args)
  if "codebook_size" in reg and int(reg["codebook_size"]) != codebook_size:
    raise ValueError(f"args say codebook_size {reg['codebook_size']} but the codebook has {codebook_size} rows")
  teacher = str(args.get("teacher", SO400M_TEACHER))
  input_size = int(args.get("input_size", 384))

  patch = _need(state, ENCODER_PREFIX + "embeddings.patch_embedding.weight")  # [hidden, C, p, p]
  positions = _need(state, ENCODER_PREFIX + "embeddings.position_embedding.weight")  # [grid^2, hidden]
  fc1 = _need(state, ENCODER_PREFIX + "encoder.layers.0.mlp.fc1.weight")
  if encoder_heads is None:
    if teacher not in KNOWN_TEACHERS:
      raise ValueError(f"cannot tell the encoder's head count for teacher {teacher!r} from tensor shapes; pass "
                       f"encoder_heads= (known teachers: {sorted(KNOWN_TEACHERS)})")
    encoder_heads = KNOWN_TEACHERS[teacher]().num_heads
  encoder = SigLIPConfig(
      hidden_size=patch.shape[0], intermediate_size=fc1.shape[0], num_layers=_layer_count(state, ENCODER_PREFIX),
      num_heads=encoder_heads, patch_size=patch.shape[-1], image_size=input_size, num_channels=patch.shape[1],
      use_head=any(k.startswith(ENCODER_PREFIX + "head.") for k in state))
  if encoder.grid_size**2 != positions.shape[0]:
    raise ValueError(f"input_size {input_size} with patch {encoder.patch_size} gives a {encoder.grid_size}^2 grid "
                     f"but the position table has {positions.shape[0]} rows")

  decoder = None
  if any(k.startswith(DECODER_PREFIX) for k in state):
    dec_patch = _need(state, DECODER_PREFIX + "embeddings.patch_embedding.weight")  # [hidden, D]
    dec_positions = _need(state, DECODER_PREFIX + "embeddings.position_embedding.weight")
    side = round(dec_positions.shape[0] ** 0.5)
    decoder = SigLIPConfig.tatok_decoder(
        code_dim, hidden_size=dec_patch.shape[0], num_layers=_layer_count(state, DECODER_PREFIX)).replace(
            num_heads=decoder_heads or TAR_DECODER_HEADS, position_embedding_size=side,
            intermediate_size=_need(state, DECODER_PREFIX + "encoder.layers.0.mlp.fc1.weight").shape[0],
            use_head=any(k.startswith(DECODER_PREFIX + "head.") for k in state))
  return TATokConfig(
      encoder=encoder, decoder=decoder, code_dim=code_dim, codebook_size=codebook_size,
      l2_normalized=bool(reg.get("l2_normalized", True)), temperature=float(reg.get("stochastic_temperature", 0.03)),
      input_size=input_size, select_layer=int(args.get("select_layer_id", -2)), teacher=teacher,
      bottleneck_token_num=int(args.get("bottleneck_token_num", encoder.grid_size**2)))


def _own_shapes(config: TATokConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """Tar name -> (planx path, Tar shape) for the tensors outside the two towers."""
  h, d, k = config.hidden_size, config.code_dim, config.codebook_size
  table = {
      "scale_layer.shift": (("scale_layer", "shift"), (1, 3, 1, 1)),
      "scale_layer.scale": (("scale_layer", "scale"), (1, 3, 1, 1)),
      "encode_task_layer.0.weight": (("encode_task_layer", "kernel"), (h, h)),
      "encode_task_layer.0.bias": (("encode_task_layer", "bias"), (h,)),
      "bottleneck.in_linear.weight": (("bottleneck", "in_linear", "kernel"), (d, h)),
      "bottleneck.in_linear.bias": (("bottleneck", "in_linear", "bias"), (d,)),
      "bottleneck.out_linear.weight": (("bottleneck", "out_linear", "kernel"), (d, d)),
      "bottleneck.out_linear.bias": (("bottleneck", "out_linear", "bias"), (d,)),
      "bottleneck.regularizer.embedding.weight": (("bottleneck", "embedding"), (k, d)),
      "bottleneck.regularizer.embedding_proj.weight": (("bottleneck", "embedding_proj", "kernel"), (d, d)),
      "bottleneck.regularizer.embedding_proj.bias": (("bottleneck", "embedding_proj", "bias"), (d,)),
  }
  if config.decoder is not None:
    for i, name in ((0, "fc1"), (2, "fc2")):
      table[f"decode_task_layer.{i}.weight"] = (("decode_task_layer", name, "kernel"), (h, h))
      table[f"decode_task_layer.{i}.bias"] = (("decode_task_layer", name, "bias"), (h,))
  return table


def _to_planx(key: str, value: np.ndarray) -> np.ndarray:
  if key.startswith("scale_layer."):
    return value.reshape(3)
  if key.endswith(".weight") and key != "bottleneck.regularizer.embedding.weight":
    return value.T  # Linear [out, in] -> kernel [in, out]
  return value


def _to_tar(key: str, value: np.ndarray) -> np.ndarray:
  if key.startswith("scale_layer."):
    return value.reshape(1, 3, 1, 1)
  if key.endswith(".weight") and key != "bottleneck.regularizer.embedding.weight":
    return value.T
  return value


def params_from_tar_state(config: TATokConfig, state: Mapping[str, np.ndarray], param_dtype="float32") -> dict:
  """Tar state dict (numpy) -> planx params; missing / unexpected / mis-shaped tensors are named errors."""
  dtype = None if param_dtype is None else np.dtype(param_dtype)
  own = _own_shapes(config)
  towers = {ENCODER_PREFIX: {}, DECODER_PREFIX: {}}
  rest = {}
  for key, value in state.items():
    if key.startswith(IGNORED_PREFIXES):
      continue
    prefix = next((p for p in towers if key.startswith(p)), None)
    (towers[prefix] if prefix else rest)[key] = value
  if config.decoder is None and towers[DECODER_PREFIX]:
    raise ValueError("checkpoint has decoder tensors but the config has no decoder")
  unexpected = sorted(set(rest) - set(own))
  if unexpected:
    raise ValueError(f"TA-Tok checkpoint has unexpected tensors {unexpected[:5]}")
  params: dict = {}
  for key, (path, shape) in own.items():
    value = _need(rest, key)
    if tuple(value.shape) != shape:
      raise ValueError(f"tensor {key!r} has shape {tuple(value.shape)}, expected {shape} from the config")
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(_to_planx(key, value))
  params["encoder"] = siglip_convert.params_from_state_dict(config.encoder, towers[ENCODER_PREFIX], ENCODER_PREFIX)
  if config.decoder is not None:
    params["decoder"] = siglip_convert.params_from_state_dict(config.decoder, towers[DECODER_PREFIX], DECODER_PREFIX)
  if dtype is not None:
    params = _cast(params, dtype)
  return params


def _cast(tree, dtype):
  if isinstance(tree, dict):
    return {k: _cast(v, dtype) for k, v in tree.items()}
  return np.asarray(tree).astype(dtype)


def params_to_tar_state(config: TATokConfig, params: dict) -> dict[str, np.ndarray]:
  """planx params -> Tar state dict (numpy), names and layouts as Tar's `TextAlignedTokenizer`."""
  state = {}
  for key, (path, shape) in _own_shapes(config).items():
    node = params
    for name in path:
      if name not in node:
        raise ValueError(f"TA-Tok params have no entry {'/'.join(path)}")
      node = node[name]
    value = np.ascontiguousarray(_to_tar(key, np.asarray(node)))
    if value.shape != shape:
      raise ValueError(f"param {'/'.join(path)} gives {key!r} of shape {value.shape}, expected {shape}")
    state[key] = value
  state.update(siglip_convert.params_to_state_dict(config.encoder, params["encoder"], ENCODER_PREFIX))
  if config.decoder is not None:
    state.update(siglip_convert.params_to_state_dict(config.decoder, params["decoder"], DECODER_PREFIX))
  return state


def tar_args(config: TATokConfig) -> dict[str, Any]:
  """The args dict Tar's `TextAlignedTokenizer.from_checkpoint` expects (plain dicts)."""
  args = {
      "bottleneck": {"name": "bottleneck", "args": {
          "bottleneck_dim": config.code_dim,
          "regularizer": {"name": "simvq", "args": {
              "codebook_size": config.codebook_size, "l2_normalized": config.l2_normalized, "stochastic": True,
              "stochastic_temperature": config.temperature}}}},
      "bottleneck_token_num": config.bottleneck_token_num,
      "input_size": config.input_size,
      "teacher": config.teacher,
      "pool_scale": 1,
      "select_layer_id": config.select_layer,
  }
  if config.decoder is not None:
    args["decoder_depth"] = config.decoder.num_layers
  return args


def load_tar(path: str | os.PathLike, *, param_dtype="float32", encoder_heads: int | None = None,
             decoder_heads: int | None = None) -> tuple[TATokConfig, dict]:
  """A Tar `ta_tok.pth` (or a directory written by `save_tar`) -> (TATokConfig, numpy params)."""
  path = Path(path)
  if path.is_dir():
    if not (path / ARGS_FILE).exists():
      raise FileNotFoundError(f"{path} has no {ARGS_FILE}; expected a directory written by save_tar or a .pth file")
    args = json.loads((path / ARGS_FILE).read_text())
    state = dict(SafetensorsReader(path).items())
  else:
    args, state = read_pth(path)
  config = config_from_tar(args, state, encoder_heads=encoder_heads, decoder_heads=decoder_heads)
  skipped = sum(k.startswith(IGNORED_PREFIXES) for k in state)
  if skipped:
    log.info("skipping %d teacher.* tensors (the distillation teacher is not used at inference)", skipped)
  return config, params_from_tar_state(config, state, param_dtype)


def save_tar(config: TATokConfig, params: dict, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """Writes Tar's format: `*.pth` -> a file `TextAlignedTokenizer.from_checkpoint` loads; else a directory
  with `ta_tok.safetensors` + `args.json` (no pickle)."""
  path = Path(path)
  state = params_to_tar_state(config, params)
  args = tar_args(config)
  if path.suffix == ".pth":
    torch = _torch()
    if path.exists() and not overwrite:
      raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": {"args": args, "sd": {k: _to_tensor(torch, v) for k, v in state.items()}}}, tmp)
    os.replace(tmp, path)
    return path
  with atomic_directory(path, overwrite=overwrite) as tmp:
    write_safetensors(state, tmp, prefix=TENSORS_NAME)
    (tmp / ARGS_FILE).write_text(json.dumps(args, indent=2) + "\n")
  return path
