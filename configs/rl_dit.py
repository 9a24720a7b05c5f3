"""RL stage: DiT Flow-GRPO. `configs/rl_dit.py:<preset>`:

- tiny: a random tiny DiT on the demo world with small encoders (CPU tests);
- demo: the `planx demo` base DiT (its DiT SFT; --config.env.demo_dir=<demo out>, default planx_demo) on the demo
  world's verifiable video reward (the judge): 8 videos per prompt, 4 prompts per step (a fixed set of 4), 10
  Euler-grid steps with a 2-step SDE window (noise level 0.3), KL 0.04, lr 1e-4, 20 steps (benchmarks/rl.md);
- 5b: TempAct's executor RL (Table 6) on Plan-X-Wan 2.2 TI2V-5B (semantic branch on): LoRA r256 alpha 256, lr 1e-5
  constant with warmup, clip (1e-5, 1e-5), KL 5e-4, advantages clipped at 2, N = 8 continuations, max grad norm 1,
  gradient accumulation 2; Flow-GRPO's SDE (noise level 0.7).
"""

import ml_collections

from planx_jax.configs.demo import rl_run
from planx_jax.train.defaults import base_config, set_pod_scale
from planx_jax.world import settings as world_settings


def demo_world(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo's DiT and latent layout (pixel codec latents [5, 16, 16, 16], umT5 states [40, 32])."""
  c.dit.preset = "tiny"
  c.dit.overrides = ml_collections.ConfigDict(world_settings.DIT)
  c.codebook_size = world_settings.CODEBOOK_SIZE
  c.video_fps = 8.0
  c.data.shapes.num_keyframes = world_settings.NUM_KEYFRAMES
  c.data.shapes.latent_shape = world_settings.LATENT_SHAPE
  c.data.shapes.text_shape = world_settings.TEXT_SHAPE
  c.rl.group_size = 8
  c.rl.num_sampling_steps = 10
  c.rl.train_steps = 2
  c.rl.shift = 3.0
  c.rl.guidance_scale = 4.0
  c.rl.noise_level = 0.3  # at 0.7 the SDE samples of this tiny DiT are far noisier than its ODE samples
  c.rl.beta = 0.04  # Flow-GRPO's KL weight: without it the reward drifts down (benchmarks/rl.md)
  c.rl.eps_low = c.rl.eps_high = 1e-3  # Flow-GRPO's Wan setting (log-probs are element means: tiny ratios)
  c.rl.advantage_clip = 5.0
  c.batch_size = 64  # 4 prompts x 8 videos x 2 steps
  return rl_run(c, steps=20, lr=1e-4, prompts=4)


def tempact_executor(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """TempAct Table 6, executor RL."""
  c.rl.group_size = 8  # N continuations
  c.rl.eps_low = c.rl.eps_high = 1e-5
  c.rl.beta = 5e-4
  c.rl.advantage_clip = 2.0
  c.lora.rank, c.lora.alpha = 256, 256.0
  c.optimizer.lr = 1e-5
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 10
  c.optimizer.clip_norm = 1.0
  c.microbatches = 2  # gradient accumulation 2
  return c


def get_config(arg=None):
  preset = arg or "demo"
  c = base_config("dit_flow_grpo")
  if preset in ("tiny", "demo"):
    demo_world(c)
    if preset == "tiny":
      c.rl.group_size = 2
      c.rl.num_sampling_steps = 4
      c.rl.train_steps = 1
      c.rl.guidance_scale = 1.0  # one DiT pass per velocity keeps the CPU tests short (CFG: the demo preset)
      c.rl.beta = 0.0
      c.batch_size = 4  # 2 prompts x 2 videos x 1 step
      c.num_steps = 2
      c.env.demo_dir = ""  # random tiny models
      c.env.kmeans_frames, c.env.kmeans_iters = 8, 2
  elif preset == "5b":
    c.dit.preset = "wan2_2_ti2v_5b"
    set_pod_scale(c)
    tempact_executor(c)
    c.rl.semantic_dim = 1536  # Plan-X: TA-Tok codebook vectors of the planned keyframes (Tar-1.5B's width)
    c.rl.num_sampling_steps = 20
    c.rl.train_steps = 2
    c.batch_size = 64  # 4 prompts x 8 continuations x 2 trained steps
    c.num_steps = 400
  else:
    raise ValueError(f"rl_dit preset must be tiny, demo or 5b, got {preset!r}")
  return c
