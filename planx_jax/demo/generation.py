"""Rendering held-out instructions with the demo's trained models through the library's inference paths: the
planner's grammar-constrained KV-cache sampler, the end-to-end semantic read-back, the DiT's flow sampler with the
given first frame, and the pixel codec. Not training (stages) and not scoring (eval.judge).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import tatok
from planx_jax.data import pixel_codec, world
from planx_jax.data.conversation import build_plan_conversation
from planx_jax.demo.assets import Encoders, encode_clips
from planx_jax.models.dit_semantic import keyframe_positions
from planx_jax.sampling import SamplingConfig, sample_plans
from planx_jax.sampling.dit_sampling import sample_latents
from planx_jax.sampling.plan_semantics import plan_semantics


@dataclasses.dataclass(frozen=True)
class Planner:
  config: object
  params: dict
  plan_tokens: object
  tokenizer: object


@dataclasses.dataclass(frozen=True)
class Conditions:
  """What every variant sees for a batch of episodes: the given first frame and the prompt."""

  codes_s0: np.ndarray  # [B, 729] TA-Tok scale-0 codes of frame 0 (the planner's image input)
  codes_first: np.ndarray  # [B, 81] scale-2 codes of frame 0 (keyframe 0 of a stage-1 plan)
  fixed_latents: np.ndarray  # [B, F, h, w, C] latents of the ground-truth clip; only frame 0 is used (TI2V)
  text_emb: np.ndarray  # [B, text_len, 32] umT5 states of the video prompts
  keys: jax.Array  # [B] noise / sampling keys, one per episode (the same for every variant)


def conditions(enc: Encoders, episodes: list[world.Episode], indices: list[int], seed: int) -> Conditions:
  clips = np.stack([world.render(e) for e in episodes])
  first_only = np.repeat(clips[:, :1], clips.shape[1], axis=1)  # nothing past frame 0 reaches the models
  coded = encode_clips(enc, first_only)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(indices))
  return Conditions(coded["codes_s0"], coded["codes_s2"][:, 0], coded["latents"],
                    enc.text_emb([e.video_prompt for e in episodes]), keys)


def plan(planner: Planner, episodes: list[world.Episode], cond: Conditions, num_keyframes: int,
         temperature: float) -> tuple[np.ndarray, list]:
  """Samples each episode's plan: codes [B, K-1, 81] and the conversations with the plan spliced in."""
  prompts = [build_plan_conversation(planner.tokenizer, planner.plan_tokens, e.image_description, e.video_prompt,
                                     num_keyframes, first_frame_codes=cond.codes_s0[i])
             for i, e in enumerate(episodes)]
  samples = sample_plans(planner.config, planner.params, planner.plan_tokens, [p.token_ids for p in prompts],
                         num_keyframes, cond.keys[0], SamplingConfig(temperature=temperature))
  codes = np.asarray(samples.codes)  # [B, K-1, 81]
  full = [build_plan_conversation(planner.tokenizer, planner.plan_tokens, e.image_description, e.video_prompt,
                                  num_keyframes, first_frame_codes=cond.codes_s0[i], plan_codes=codes[i])
          for i, e in enumerate(episodes)]
  return codes, full


def ground_truth_plan(enc: Encoders, episodes: list[world.Episode]) -> np.ndarray:
  """[B, K-1, 81]: TA-Tok scale-2 codes of the ground-truth keyframes after frame 0 (what a perfect planner plans)."""
  return encode_clips(enc, np.stack([world.render(e) for e in episodes]))["codes_s2"][:, 1:]


def end_to_end_semantics(planner: Planner, conversations: list) -> np.ndarray:
  """[B, (K-1) * 81, hidden]: the planner's hidden states at its planned codes (the end-to-end DiT's input)."""
  return np.asarray(plan_semantics(planner.config, planner.params, conversations, planner.plan_tokens.endoftext))


def codebook_semantics(enc: Encoders, cond: Conditions, codes: np.ndarray) -> np.ndarray:
  """[B, K * 81, code_dim]: TA-Tok codebook vectors of keyframe 0 (encoded) and the planned keyframes (stage 1)."""
  plan_codes = np.concatenate([cond.codes_first[:, None], codes], axis=1).reshape(codes.shape[0], -1)
  return np.asarray(tatok.decode_embeddings(enc.tatok_config, enc.tatok_params, jnp.asarray(plan_codes)))


def semantic_positions(dit_config, enc: Encoders, keyframes: list[int]) -> np.ndarray:
  return keyframe_positions(dit_config, enc.shapes.latent_shape, keyframes, float(world.FPS))


@functools.partial(jax.jit, static_argnames=("config", "num_steps", "shift", "guidance_scale", "solver"))
def _sample(params, keys, text_emb, fixed, semantic, positions, *, config, num_steps, shift, guidance_scale,
            solver):
  noise = jax.vmap(lambda k: jax.random.normal(k, fixed.shape[1:], jnp.float32))(keys)  # [B, F, h, w, C]
  sem = {}
  if semantic is not None:
    sem = dict(semantic=semantic.astype(jnp.float32),
               semantic_positions=jnp.broadcast_to(positions, (semantic.shape[0], *positions.shape)))
  return sample_latents(config, params, noise, text_emb, jnp.zeros_like(text_emb), num_steps=num_steps, shift=shift,
                        guidance_scale=guidance_scale, solver=solver, fixed_latents=fixed, **sem)


def render(dit_config, dit_params, enc: Encoders, cond: Conditions, gen, semantic=None, positions=None) -> np.ndarray:
  """Frames [B, T, H, W, 3] uint8 from the DiT (frame 0 given), optionally with semantic tokens."""
  latents = _sample(dit_params, cond.keys, jnp.asarray(cond.text_emb), jnp.asarray(cond.fixed_latents),
                    None if semantic is None else jnp.asarray(semantic),
                    None if positions is None else jnp.asarray(positions), config=dit_config,
                    num_steps=int(gen.num_steps), shift=float(gen.shift), guidance_scale=float(gen.guidance_scale),
                    solver=str(gen.solver))
  video = pixel_codec.decode(enc.codec, latents)  # [B, T, H, W, 3] in [-1, 1]
  return np.asarray(jnp.round((video + 1.0) * 127.5), np.uint8)
