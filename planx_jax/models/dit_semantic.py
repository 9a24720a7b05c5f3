"""The Plan-X semantic branch around the Wan DiT: adding it to base params, its trainable labels
(stage 1), and the scaled 3D positions of keyframe tokens (DESIGN.md decision 5).

The branch's forward pass is in `models/dit.py`; this module only builds params,
labels and positions.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.models.dit_config import DiTConfig

SEMANTIC_PARAM_NAMES = ("k_sem", "v_sem", "norm_k_sem", "semantic_embedding")
# Copies made by `add_semantic_branch`: new name <- text-branch name, in every cross-attention block.
SEMANTIC_COPIES = {"k_sem": "k", "v_sem": "v", "norm_k_sem": "norm_k"}


def _blocks(params: dict) -> list[dict]:
  """The block subtrees (one stacked `blocks` tree, or `blocks_0`, `blocks_1`, ...)."""
  if "blocks" in params:
    return [params["blocks"]]
  blocks = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
  if not blocks:
    raise ValueError("params have no DiT blocks ('blocks' or 'blocks_0', ...)")
  return [params[k] for k in blocks]


def add_semantic_branch(config: DiTConfig, params: dict, semantic_in_dim: int,
                        rng: jax.Array | None = None) -> tuple[DiTConfig, dict]:
  """Adds Plan-X's semantic branch to base Wan params (Plan-X Section 6.2).

  In every cross-attention block `k_sem`, `v_sem` and `norm_k_sem` start as exact
  copies of the text `k`, `v` and `norm_k`; the 2-layer GELU MLP from
  `semantic_in_dim` to the DiT width starts as normal(0.02) kernels and zero biases
  (from `rng`, default key 0). Returns the new config and a new params dict (the
  input is not modified; numpy or JAX arrays).
  """
  if config.semantic_in_dim is not None:
    raise ValueError(f"the DiT already has a semantic branch (semantic_in_dim={config.semantic_in_dim})")
  _blocks(params)
  new_config = config.replace(semantic_in_dim=int(semantic_in_dim))
  params = copy_text_to_semantic(params)
  rng = jax.random.key(0) if rng is None else rng
  k1, k2 = jax.random.split(rng)
  dim, dtype = config.dim, params["text_embedding"]["linear_1"]["kernel"].dtype
  params["semantic_embedding"] = {
      "linear_1": {"kernel": np.asarray(0.02 * jax.random.normal(k1, (semantic_in_dim, dim)), dtype),
                   "bias": np.zeros((dim,), dtype)},
      "linear_2": {"kernel": np.asarray(0.02 * jax.random.normal(k2, (dim, dim)), dtype),
                   "bias": np.zeros((dim,), dtype)},
  }
  return new_config, params


def copy_text_to_semantic(params: dict) -> dict:
  """A new params dict whose cross-attention `k_sem`, `v_sem`, `norm_k_sem` are copies of the text `k`, `v`,
  `norm_k` in every block (Plan-X 6.2); numpy, JAX or traced arrays."""
  params = dict(params)
  for key in [k for k in params if k == "blocks" or k.startswith("blocks_")]:
    block = dict(params[key])
    cross = dict(block["cross_attn"])
    for new, old in SEMANTIC_COPIES.items():
      cross[new] = jax.tree.map(lambda x: x.copy(), cross[old])
    block["cross_attn"] = cross
    params[key] = block
  return params


def check_semantic_inputs(semantic_in_dim: int | None, batch: int, semantic, semantic_positions,
                          semantic_mask) -> None:
  """Shape checks shared by the DiT and the MMDiT for semantic embeddings [B, S, semantic_in_dim], their
  positions [B, S, 3] and an optional mask [B, S]; raises ValueError naming the offending input."""
  if semantic is None:
    for name, value in (("semantic_positions", semantic_positions), ("semantic_mask", semantic_mask)):
      if value is not None:
        raise ValueError(f"{name} was given without semantic embeddings")
    return
  if semantic_in_dim is None:
    raise ValueError("semantic embeddings were given but the model has no semantic branch (semantic_in_dim is "
                     "None); add one with add_semantic_branch")
  if semantic.ndim != 3 or semantic.shape[0] != batch or semantic.shape[-1] != semantic_in_dim:
    raise ValueError(f"semantic must be [B={batch}, S, semantic_in_dim={semantic_in_dim}], got "
                     f"{tuple(semantic.shape)}")
  s = semantic.shape[1]
  if semantic_positions is None or tuple(semantic_positions.shape) != (batch, s, 3):
    got = None if semantic_positions is None else tuple(semantic_positions.shape)
    raise ValueError(f"semantic_positions must be [B, S, 3] = [{batch}, {s}, 3] (f, h, w), got {got}")
  if semantic_mask is not None and tuple(semantic_mask.shape) != (batch, s):
    raise ValueError(f"semantic_mask must be [B, S] = [{batch}, {s}], got {tuple(semantic_mask.shape)}")


def semantic_branch_labels(params: dict) -> dict:
  """"trainable" for the semantic branch (MLP, k_sem, v_sem, norm_k_sem), "frozen" for everything else.

  Plan-X stage 1: use with `optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()}, labels)`.
  """
  def label(path, _):
    names = {getattr(entry, "key", None) for entry in path}
    return "trainable" if names & set(SEMANTIC_PARAM_NAMES) else "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


def video_token_grid(num_frames: int, height: int, width: int, vae_stride=(4, 16, 16),
                     patch_size=(1, 2, 2)) -> tuple[int, int, int]:
  """Latent-token grid (F, H, W) of a video: latents (1 + (T-1)/4, H/16, W/16), then the DiT patch.

  704x1280, 121 frames -> latents 31 x 44 x 80 -> tokens 31 x 22 x 40.
  """
  st, sh, sw = vae_stride
  if (num_frames - 1) % st or height % sh or width % sw:
    raise ValueError(f"video {num_frames}x{height}x{width} does not fit the VAE stride {tuple(vae_stride)} "
                     f"(frames must be 1 + {st}k, sides multiples of {sh}/{sw})")
  latent = (1 + (num_frames - 1) // st, height // sh, width // sw)
  if any(n % p for n, p in zip(latent, patch_size)):
    raise ValueError(f"latent grid {latent} is not divisible by the patch {tuple(patch_size)}")
  return tuple(n // p for n, p in zip(latent, patch_size))


def semantic_positions(token_grid: Sequence[int], keyframes: Sequence[int] | int, keyframe_grid=(9, 9),
                       video_fps: float = 24.0, keyframe_fps: float = 2.0, vae_stride_t: int = 4,
                       patch_t: int = 1) -> np.ndarray:
  """Float (f, h, w) positions [K * gh * gw, 3] of keyframe tokens on the latent-token grid.

  Keyframe t' (at `keyframe_fps`, t' = 0 is video frame 0) sits at latent-token frame
  t' * (video_fps / vae_stride_t / patch_t) / keyframe_fps (3 t' for 24 fps Wan2.2);
  cell (h', w') of the gh x gw keyframe map sits at the centre of its region of the
  token grid: h = (h' + 0.5) * H / gh - 0.5 (same for w). Tokens are ordered
  keyframe, then row, then column (TA-Tok's code order).

  Args:
    token_grid: (F, H, W) latent-token grid of the video (`video_token_grid`).
    keyframes: keyframe indices t', or their count K (indices 0..K-1).
  """
  f_tok, h_tok, w_tok = (int(n) for n in token_grid)
  keyframes = list(range(keyframes)) if isinstance(keyframes, int) else [int(k) for k in keyframes]
  gh, gw = keyframe_grid
  frame_scale = video_fps / vae_stride_t / patch_t / keyframe_fps
  t = np.asarray(keyframes, np.float64) * frame_scale  # [K]
  if t.size and (t.min() < 0 or t.max() > f_tok - 1):
    raise ValueError(f"keyframes {keyframes} map to latent frames {t.tolist()}, outside the {f_tok}-frame grid")
  h = (np.arange(gh) + 0.5) * h_tok / gh - 0.5  # [gh]
  w = (np.arange(gw) + 0.5) * w_tok / gw - 0.5  # [gw]
  tt, hh, ww = np.meshgrid(t, h, w, indexing="ij")  # [K, gh, gw]
  return np.stack([tt, hh, ww], axis=-1).reshape(-1, 3).astype(np.float32)


def keyframe_positions(dit_config: DiTConfig, latent_shape, keyframes, video_fps: float) -> np.ndarray:
  """[S, 3] float (f, h, w) positions of the 9x9 code maps of `keyframes` on the latent-token grid of latents
  [F, H, W, ...] patched by the DiT."""
  f, h, w = latent_shape[:3]
  pt, ph, pw = dit_config.patch_size
  return semantic_positions((f // pt, h // ph, w // pw), keyframes, video_fps=video_fps, patch_t=pt)


def batch_positions(positions: np.ndarray, batch: int) -> jax.Array:
  """[S, 3] -> [B, S, 3] (the same plan layout for every example)."""
  return jnp.broadcast_to(jnp.asarray(positions), (batch, *positions.shape))
