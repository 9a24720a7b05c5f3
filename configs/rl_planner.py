"""RL stage: planner GRPO / GSPO. `configs/rl_planner.py:<preset>`:

- tiny: a random tiny planner on the demo world with small encoders (CPU tests);
- demo: the `planx demo` planner (--config.env.demo_dir=<demo out>, default planx_demo) on the demo world's
  verifiable plan reward, GRPO with 8 plans per prompt, 2 prompts per step from 8 training prompts, lr 1e-3, 50
  steps (benchmarks/rl.md);
- 1.5b: TempAct's planner RL (Table 6): GSPO (sequence-level ratio), LoRA r32 alpha 64, lr 2e-5, clip (5e-4, 5e-4),
  KL 5e-4 to the frozen initial policy, advantages clipped at 1, M = 4 plans per prompt;
- 1.5b_reade: ReaDe's interpreter RL (Sec. 4.1, D.3): GRPO (token level), 8 rollouts, KL 0.001, clip 0.2,
  constant lr 2.5e-6.
"""

import ml_collections

from planx_jax.configs.demo import rl_run
from planx_jax.train.defaults import base_config, set_pod_scale
from planx_jax.world import settings as world_settings


def demo_world(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo's planner and Plan-X layout (128 codes, 5 keyframes, 1280-token conversations)."""
  c.planner.preset = "tiny"
  c.planner.overrides = ml_collections.ConfigDict(world_settings.PLANNER)
  c.codebook_size = world_settings.CODEBOOK_SIZE
  c.data.seq_len = world_settings.SEQ_LEN
  c.data.shapes.num_keyframes = world_settings.NUM_KEYFRAMES
  c.ce_chunk = 640
  c.rl.group_size = 8
  c.batch_size = 16  # 2 prompts x 8 plans
  return rl_run(c, steps=50, lr=1e-3, prompts=8)


def tempact(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """TempAct Table 6, planner RL."""
  c.rl.level = "sequence"  # GSPO
  c.rl.loss_type = "grpo"  # per-sequence terms averaged over the sequences
  c.rl.group_size = 4  # M plans per prompt
  c.rl.eps_low = c.rl.eps_high = 5e-4
  c.rl.beta = 5e-4
  c.rl.advantage_clip = 1.0
  c.lora.rank, c.lora.alpha = 32, 64.0
  c.optimizer.lr = 2e-5
  c.microbatches = 2  # gradient accumulation 2
  return c


def reade(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """ReaDe stage 2 (GRPO on the interpreter)."""
  c.rl.level = "token"
  c.rl.loss_type = "grpo"
  c.rl.group_size = 8
  c.rl.eps_low = c.rl.eps_high = 0.2
  c.rl.beta = 1e-3
  c.optimizer.lr = 2.5e-6
  c.optimizer.schedule = "constant"
  return c


def get_config(arg=None):
  preset = arg or "demo"
  c = base_config("planner_grpo")
  if preset in ("tiny", "demo"):
    demo_world(c)
    if preset == "tiny":
      c.batch_size = 4
      c.rl.group_size = 2
      c.num_steps = 2
      c.env.demo_dir = ""  # random tiny models
      c.env.kmeans_frames, c.env.kmeans_iters = 8, 2
  elif preset in ("1.5b", "1.5b_reade"):
    c.planner.preset = "qwen2_5_1_5b"
    set_pod_scale(c, video=False)
    c.data.seq_len = 4096
    c.data.shapes.num_keyframes = 11
    c.num_steps = 400
    c.optimizer.warmup_steps = 10
    tempact(c) if preset == "1.5b" else reade(c)
    c.batch_size = 64 if preset == "1.5b" else 128  # rows: 16 prompts x G
  else:
    raise ValueError(f"rl_planner preset must be tiny, demo, 1.5b or 1.5b_reade, got {preset!r}")
  return c
