"""Public entry points of TA-Tok: the SigLIP tower, encode / decode, keyframe codes, Tar and HF import.

Gathers `models/siglip*.py`, `models/tatok*.py`, `data/keyframes.py` and the converters
under the names users import (`planx_jax.tatok.encode`, ...), and checks inputs
eagerly (before any trace) with errors that say what was expected.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from planx_jax.checks import is_concrete
from planx_jax.convert.siglip import load_siglip_hf, save_siglip_hf
from planx_jax.convert.tatok_tar import load_tar, save_tar
from planx_jax.data.keyframes import keyframe_indices, select_keyframes
from planx_jax.model_spec import ModelSpec
from planx_jax.models import siglip as siglip_model
from planx_jax.models import tatok as tatok_model
from planx_jax.models.siglip import SigLIPVision
from planx_jax.models.siglip_config import SigLIPConfig
from planx_jax.models.tatok_config import TATokConfig, check_scale
from planx_jax.plan_tokens import PlanTokens

__all__ = [
    "SPEC", "SigLIPConfig", "SigLIPVision", "TATokConfig", "abstract_params", "codebook_vectors", "codes_to_token_ids",
    "decode_embeddings", "decode_features", "encode", "init_params", "keyframe_indices", "load_checkpoint",
    "load_siglip_hf", "load_tar", "param_count", "save_checkpoint", "save_siglip_hf", "save_tar", "token_ids_to_codes",
    "video_keyframe_codes",
]

log = logging.getLogger("planx.tatok")


def _check_images(config: TATokConfig, images) -> None:
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3] RGB (channels last), got shape {shape}")
  if min(shape) < 1:
    raise ValueError(f"images have an empty axis: shape {shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be floats in [0, 1], got dtype {images.dtype} (divide uint8 pixels by 255)")
  if is_concrete(images):
    # Comparisons, not min/max: XLA:CPU's vectorised min/max can skip NaNs.
    if bool(jnp.any(~((images >= 0.0) & (images <= 1.0)))):
      finite = bool(jnp.all(jnp.isfinite(images)))
      found = f"range [{float(jnp.min(images))}, {float(jnp.max(images))}]" if finite else "NaN or infinite values"
      raise ValueError(f"image values must lie in [0, 1], got {found}")


def _check_codes(config: TATokConfig, codes) -> None:
  shape = getattr(codes, "shape", None)
  if shape is None or len(shape) != 2:
    raise ValueError(f"codes must be [B, N] integers, got shape {shape}")
  if not jnp.issubdtype(codes.dtype, jnp.integer):
    raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
  if is_concrete(codes) and codes.size:
    lo, hi = int(jnp.min(codes)), int(jnp.max(codes))
    if lo < 0 or hi >= config.codebook_size:
      raise ValueError(f"codes must lie in [0, {config.codebook_size}), got range [{lo}, {hi}]")


def codebook_vectors(config: TATokConfig, params: dict) -> jax.Array:
  """The normalised lookup table [K, D] fp32; compute once and pass as `codebook=` when encoding many batches."""
  return jax.jit(tatok_model.codebook_vectors, static_argnums=0)(config, params)


def encode(config: TATokConfig, params: dict, images, scale: int, *, codebook: jax.Array | None = None,
           rng: jax.Array | None = None, temperature: float | None = None) -> jax.Array:
  """Images [B, H, W, 3] in [0, 1] -> codes [B, N] int32 (N = 729 / 169 / 81 at scale 0 / 1 / 2 for so400m).

  Default: the code of maximal cosine similarity (smallest index on exact ties).
  With `rng`: a draw from softmax(similarity / temperature) (Tar's stochastic
  lookup; temperature defaults to config.temperature, 0.03).
  """
  check_scale(scale)
  images = jnp.asarray(images)
  _check_images(config, images)
  if temperature is not None and (rng is None or temperature <= 0):
    raise ValueError("temperature applies to sampling: pass rng= as well, with temperature > 0")
  return tatok_model.encode_codes(config, params, images, scale, codebook, rng, temperature)


def decode_embeddings(config: TATokConfig, params: dict, codes) -> jax.Array:
  """Codes [B, N] -> normalised codebook vectors [B, N, D] fp32 (the DiT semantic branch's stage-1 input)."""
  codes = jnp.asarray(codes)
  _check_codes(config, codes)
  return tatok_model.code_embeddings(config, params, codes)


def decode_features(config: TATokConfig, params: dict, codes) -> jax.Array:
  """Codes [B, N] (N a square: 729 / 169 / 81) -> SigLIP-like features [B, N, hidden] through the decoder."""
  if config.decoder is None:
    raise ValueError("this TA-Tok config has no decoder (load a checkpoint with decoder.* tensors)")
  codes = jnp.asarray(codes)
  _check_codes(config, codes)
  side = round(codes.shape[1] ** 0.5)
  if side * side != codes.shape[1]:
    raise ValueError(f"the decoder needs a square code grid, got {codes.shape[1]} codes per image")
  return tatok_model.decode_codes(config, params, codes)


def video_keyframe_codes(config: TATokConfig, params: dict, frames, fps: float, scale: int = 2, *,
                         batch_size: int = 8, codebook: jax.Array | None = None, progress: bool = True) -> np.ndarray:
  """Video [T, H, W, 3] (uint8, or float in [0, 1]) at `fps` -> codes [F, N] int32 of its 2-FPS keyframes.

  Keyframes are frames 0, fps/2, fps, ... (see `keyframe_indices`), encoded in
  batches of `batch_size` (the last batch is padded, so one compiled shape serves all).
  """
  check_scale(scale)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  keyframes, indices = select_keyframes(frames, fps)
  if codebook is None:
    codebook = codebook_vectors(config, params)
  out = []
  batches = range(0, len(indices), batch_size)
  for start in tqdm(batches, desc="TA-Tok keyframes", unit="batch", disable=not progress or len(batches) < 2):
    chunk = keyframes[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)]) if len(
        chunk) < batch_size else chunk
    out.append(np.asarray(encode(config, params, padded, scale, codebook=codebook))[: len(chunk)])
  log.info("encoded %d keyframes (frames %s) at scale %d", len(indices), indices.tolist(), scale)
  return np.concatenate(out).astype(np.int32)


def codes_to_token_ids(codes, plan_tokens: PlanTokens | None = None) -> np.ndarray:
  """Codes -> planner token ids `<I k>` (151670 + k with Qwen2.5's layout)."""
  return np.asarray((plan_tokens or PlanTokens()).code_to_id(np.asarray(codes)))


def token_ids_to_codes(token_ids, plan_tokens: PlanTokens | None = None) -> np.ndarray:
  """Planner token ids of `<I k>` tokens -> codes k; any other id is an error."""
  return np.asarray((plan_tokens or PlanTokens()).id_to_code(np.asarray(token_ids)))


def init_params(config: TATokConfig, rng: jax.Array) -> dict:
  """Random TA-Tok params (for tests and the demo): normal(0.02) linears, normal(1) codebook, Tar's 0.5 scale layer."""
  keys = jax.random.split(rng, 8)
  h, d = config.hidden_size, config.code_dim

  def dense(key, n_in, n_out):
    return {"kernel": 0.02 * jax.random.normal(key, (n_in, n_out)), "bias": jnp.zeros((n_out,))}

  params = {
      "scale_layer": {"shift": jnp.full((3,), 0.5), "scale": jnp.full((3,), 0.5)},
      "encoder": siglip_model.init_params(config.encoder, keys[0]),
      "encode_task_layer": dense(keys[1], h, h),
      "bottleneck": {
          "in_linear": dense(keys[2], h, d), "out_linear": dense(keys[3], d, d),
          "embedding": jax.random.normal(keys[4], (config.codebook_size, d)),
          "embedding_proj": dense(keys[5], d, d),
      },
  }
  if config.decoder is not None:
    params["decoder"] = siglip_model.init_params(config.decoder, keys[6])
    k1, k2 = jax.random.split(keys[7])
    params["decode_task_layer"] = {"fc1": dense(k1, h, h), "fc2": dense(k2, h, h)}
  return params


# The towers' attention_impl is not a TA-Tok field: `config.replace(encoder=config.encoder.replace(...))` after loading.
SPEC = ModelSpec(kind="tatok", config_cls=TATokConfig, init=init_params,
                 runtime_fields=frozenset({"codebook_impl", "codebook_tile"}))
abstract_params, param_count = SPEC.abstract_params, SPEC.param_count
save_checkpoint, load_checkpoint = SPEC.save_checkpoint, SPEC.load_checkpoint
