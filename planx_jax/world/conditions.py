"""What a policy sees of a world prompt: the given first frame's TA-Tok codes and latents, the prompt's umT5 states
and a sampling key per episode, and the semantic tokens of a stage-1 plan. Not the sampling (demo.generation, rl)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import tatok
from planx_jax.world import scenes
from planx_jax.world.encoders import Encoders, encode_clips


@dataclasses.dataclass(frozen=True)
class Conditions:
  """What every variant sees for a batch of episodes: the given first frame and the prompt."""

  codes_s0: np.ndarray  # [B, 729] TA-Tok scale-0 codes of frame 0 (the planner's image input)
  codes_first: np.ndarray  # [B, 81] scale-2 codes of frame 0 (keyframe 0 of a stage-1 plan)
  fixed_latents: np.ndarray  # [B, F, h, w, C] latents of the ground-truth clip; only frame 0 is used (TI2V)
  text_emb: np.ndarray  # [B, text_len, 32] umT5 states of the video prompts
  keys: jax.Array  # [B] noise / sampling keys, one per episode (the same for every variant)


def conditions(enc: Encoders, episodes: list[scenes.Episode], indices: list[int], seed: int) -> Conditions:
  clips = np.stack([scenes.render(e) for e in episodes])
  first_only = np.repeat(clips[:, :1], clips.shape[1], axis=1)  # nothing past frame 0 reaches the models
  coded = encode_clips(enc, first_only)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(indices))
  return Conditions(coded["codes_s0"], coded["codes_s2"][:, 0], coded["latents"],
                    enc.text_emb([e.video_prompt for e in episodes]), keys)


def ground_truth_plan(enc: Encoders, episodes: list[scenes.Episode]) -> np.ndarray:
  """[B, K-1, 81]: TA-Tok scale-2 codes of the ground-truth keyframes after frame 0 (what a perfect planner plans)."""
  return encode_clips(enc, np.stack([scenes.render(e) for e in episodes]))["codes_s2"][:, 1:]


def codebook_semantics(enc: Encoders, cond: Conditions, codes: np.ndarray) -> np.ndarray:
  """[B, K * 81, code_dim]: TA-Tok codebook vectors of keyframe 0 (encoded) and the planned keyframes (stage 1)."""
  plan_codes = np.concatenate([cond.codes_first[:, None], codes], axis=1).reshape(codes.shape[0], -1)
  return np.asarray(tatok.decode_embeddings(enc.tatok_config, enc.tatok_params, jnp.asarray(plan_codes)))
