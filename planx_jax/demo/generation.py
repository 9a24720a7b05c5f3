"""Rendering held-out instructions with the demo's trained models through the library's inference paths: the
planner's grammar-constrained KV-cache sampler, the end-to-end semantic read-back, the DiT's flow sampler with the
given first frame (world.conditions), and the pixel codec. Not training (stages) and not scoring (world.judge).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.data import pixel_codec
from planx_jax.data.conversation import build_plan_conversation
from planx_jax.models.dit_semantic import keyframe_positions
from planx_jax.sampling import SamplingConfig, sample_plans
from planx_jax.sampling.dit_sampling import sample_latents
from planx_jax.sampling.plan_semantics import plan_semantics
from planx_jax.world import scenes
from planx_jax.world.conditions import Conditions
from planx_jax.world.encoders import Encoders


@dataclasses.dataclass(frozen=True)
class Planner:
  config: object
  params: dict
  plan_tokens: object
  tokenizer: object


def plan(planner: Planner, episodes: list[scenes.Episode], cond: Conditions, num_keyframes: int,
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


def end_to_end_semantics(planner: Planner, conversations: list) -> np.ndarray:
  """[B, (K-1) * 81, hidden]: the planner's hidden states at its planned codes (the end-to-end DiT's input)."""
  return np.asarray(plan_semantics(planner.config, planner.params, conversations, planner.plan_tokens.endoftext))


def semantic_positions(dit_config, enc: Encoders, keyframes: list[int]) -> np.ndarray:
  return keyframe_positions(dit_config, enc.shapes.latent_shape, keyframes, float(scenes.FPS))


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
