"""TempAct's hierarchical planner-executor RL (Sec. 3.3, Table 6). `configs/rl_tempact.py:<preset>`:

- tiny: random tiny models on the demo world with small encoders (CPU tests);
- demo: the `planx demo` planner (GSPO, M = 4 plans per prompt) and its stage-1 Plan-X DiT as the executor
  (Flow-GRPO on the transition chunk, N = 4 continuations per plan) on the demo world's verifiable rewards
  (--config.planner_rl.env.demo_dir / executor_rl.env.demo_dir = the demo's output, default planx_demo).

Clip ranges, KL and LoRA follow Table 6 at real size (configs/rl_planner.py:1.5b, configs/rl_dit.py:5b); the demo
keeps the tiny models' larger learning rates and clip ranges, as the standalone demo RL configs do.
"""

from planx_jax.configs import rl_dit, rl_planner
from planx_jax.rl import hierarchy
from planx_jax.world import settings as world_settings


def get_config(arg=None):
  preset = arg or "demo"
  if preset not in ("tiny", "demo"):
    raise ValueError(f"rl_tempact preset must be tiny or demo, got {preset!r}")
  c = hierarchy.default_config()
  c.planner_rl = rl_planner.get_config(preset)
  c.executor_rl = rl_dit.get_config(preset)
  p, e = c.planner_rl, c.executor_rl
  p.rl.level = "sequence"  # GSPO
  p.rl.advantage_clip = 1.0
  e.rl.advantage_clip = 2.0
  e.rl.semantic_dim = world_settings.CODE_DIM  # the stage-1 Plan-X DiT reads TA-Tok codebook vectors
  if preset == "tiny":
    p.rl.group_size, e.rl.group_size, e.rl.train_steps = 2, 2, 1
    c.hierarchy.prompts_per_step = 1
    c.num_steps = 2
  else:
    p.rl.group_size, e.rl.group_size, e.rl.train_steps = 4, 4, 1
    c.hierarchy.prompts_per_step = 2
    c.num_steps = 30
  m, n = p.rl.group_size, e.rl.group_size
  p.batch_size = c.hierarchy.prompts_per_step * m
  e.batch_size = c.hierarchy.prompts_per_step * m * n * e.rl.train_steps
  c.hierarchy.switch_min, c.hierarchy.switch_max = 1, 2  # 5 latent frames: context 0..k, chunk k + 1
  return c
