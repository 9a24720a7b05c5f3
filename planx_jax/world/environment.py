"""The demo world as an RL environment: prompts (instruction + first frame) for the planner and the DiT, and
verifiable rewards from the colour-segmentation judge, so RL post-training is measurable on CPU. Not the
rollouts or the losses.

The encoders (TA-Tok with its k-means codebook, umT5, the pixel codec) are rebuilt exactly as `planx demo` builds
them from the world's settings (world.settings), so a policy trained by the demo reads the same codes and latents.
"""

import logging

import jax.numpy as jnp
import numpy as np

from planx_jax.data import pixel_codec
from planx_jax.data.conversation import PLAN_FRAME_CODES, build_plan_conversation
from planx_jax.rewards import registry
from planx_jax.world import conditions as world_conditions
from planx_jax.world import scenes
from planx_jax.world.code_colors import GRID
from planx_jax.world.encoders import build_encoders
from planx_jax.world.settings import world_config

log = logging.getLogger("planx.rl")


class WorldEnvironment:
  """`env.kind = "world"`. Prompt i is episode i of the world's `env.split` (deterministic from the demo's world
  seed). Rewards are looked up by name in `planx_jax.rewards.registry`: a planner reward is called as
  `fn(plan_codes [K-1, 9, 9], code_colors=, episode=, keyframe_frames=)`, a video reward as `fn(frames [T, H, W, 3]
  uint8, episode=)`; both return a dict with a float "reward"."""

  def __init__(self, env, settings=None, *, tokenizer=None, plan_tokens=None, num_keyframes: int | None = None):
    settings = settings or world_config()
    self.settings = settings
    self.split = str(env.split)
    if self.split not in scenes.SPLITS:
      raise ValueError(f"env.split must be one of {scenes.SPLITS}, got {self.split!r}")
    self.num_prompts = int(env.num_prompts)
    if self.num_prompts < 1:
      raise ValueError(f"env.num_prompts must be >= 1, got {self.num_prompts}")
    self.seed = int(env.seed)
    self.episodes = scenes.WorldSource(int(settings.world.seed), self.split, self.num_prompts)
    train = list(scenes.WorldSource(int(settings.world.seed), "train", int(settings.world.num_train)))
    log.info("world env: building the demo's encoders (TA-Tok k-means, umT5, pixel codec)")
    self.enc = build_encoders(settings, train)
    self.tokenizer, self.plan_tokens = tokenizer, plan_tokens
    k = len(self.enc.keyframes) if num_keyframes is None else int(num_keyframes)
    if k != len(self.enc.keyframes):
      raise ValueError(f"the world's clips have {len(self.enc.keyframes)} keyframes, the config says {k}")
    self.num_keyframes = k

  def episode(self, index: int) -> scenes.Episode:
    return self.episodes[int(index) % self.num_prompts]

  def conditions(self, indices) -> world_conditions.Conditions:
    """First-frame codes / latents and umT5 text states of the prompts (nothing past frame 0 is seen)."""
    indices = [int(i) % self.num_prompts for i in indices]
    return world_conditions.conditions(self.enc, [self.episodes[i] for i in indices], indices, self.seed)

  # --- the planner ------------------------------------------------------------------------------------------
  def plan_prompts(self, indices, cond: world_conditions.Conditions) -> list:
    """The generation prompts (PlanConversation, up to the assistant turn) of the prompts."""
    return [self.plan_conversation(i, cond.codes_s0[j], None) for j, i in enumerate(indices)]

  def plan_conversation(self, index: int, first_frame_codes, plan_codes):
    """Prompt `index`'s conversation with the first frame's codes (and, given, the plan spliced in)."""
    e = self.episode(index)
    return build_plan_conversation(self.tokenizer, self.plan_tokens, e.image_description, e.video_prompt,
                                   self.num_keyframes, first_frame_codes=first_frame_codes, plan_codes=plan_codes)

  def plan_rewards(self, name: str, indices, codes) -> np.ndarray:
    """[B] float32 rewards of plans codes [B, K-1, 81] for the prompts `indices` [B]."""
    fn = registry.get_reward(name)
    codes = np.asarray(codes).reshape(len(indices), self.num_keyframes - 1, GRID, GRID)
    frames = [int(f) for f in self.enc.keyframes[1:]]
    return np.asarray([_reward(name, fn(codes[j], code_colors=self.enc.code_rgb, episode=self.episode(i),
                                        keyframe_frames=frames)) for j, i in enumerate(indices)], np.float32)

  def codebook_semantics(self, cond: world_conditions.Conditions, codes) -> np.ndarray:
    """[B, K * 81, code_dim]: TA-Tok codebook vectors of keyframe 0 and the planned keyframes (a stage-1 DiT's
    semantic tokens)."""
    return world_conditions.codebook_semantics(self.enc, cond, np.asarray(codes).reshape(-1, self.num_keyframes - 1,
                                                                                    PLAN_FRAME_CODES))

  # --- the DiT ----------------------------------------------------------------------------------------------
  def frames(self, latents) -> np.ndarray:
    """Latents [B, F, h, w, C] -> frames [B, T, H, W, 3] uint8 through the pixel codec."""
    video = pixel_codec.decode(self.enc.codec, jnp.asarray(latents))
    return np.asarray(jnp.round((video + 1.0) * 127.5), np.uint8)

  def video_rewards(self, name: str, indices, latents) -> np.ndarray:
    fn = registry.get_reward(name)
    frames = self.frames(latents)
    return np.asarray([_reward(name, fn(frames[j], episode=self.episode(i))) for j, i in enumerate(indices)],
                      np.float32)


def _reward(name: str, out) -> float:
  if not isinstance(out, dict) or "reward" not in out:
    raise ValueError(f"reward {name!r} must return a dict with a 'reward' entry, got {type(out).__name__}")
  value = float(out["reward"])
  if not np.isfinite(value):
    raise ValueError(f"reward {name!r} returned a non-finite reward {value}")
  return value
