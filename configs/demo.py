"""The CPU demo: a tiny Plan-X trained on the built-in synthetic world (`planx demo`), and its stages as experiment
configs. `configs/demo.py` (or `:demo`) is the demo's own config; `configs/demo.py:<stage>` is one of its
training stages (planner_sft, dit_sft, dit_stage1, end_to_end) for `planx train` on the demo's records
(--config.data.tfds_dir=<demo out>/data).

The values live in the library: the world's sizes and encoder settings in `planx_jax.world.settings` (64x64
frames, 17 frames at 8 fps, pixel codec latents [5, 16, 16, 16], umT5 states [40, 32], 128 TA-Tok codes), the
stage configs and the demo's steps in `planx_jax.demo.settings`.
"""

import ml_collections

from planx_jax.demo.settings import demo_config, stage_config


def rl_run(c: ml_collections.ConfigDict, *, steps: int, lr: float, prompts: int) -> ml_collections.ConfigDict:
  """RL on the demo world (configs/rl_*.py:demo): a constant learning rate, every step logged, a checkpoint every
  10 steps, and `prompts` training prompts cycled (a small fixed set, so a few dozen CPU steps revisit each)."""
  c.num_steps = steps
  c.optimizer.lr = lr
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.log.every = 1
  c.env.num_prompts = prompts
  c.env.demo_dir = "planx_demo"
  return c


def get_config(arg=None):
  if arg not in (None, "", "demo"):
    return stage_config(arg, demo_config().steps[arg])
  return demo_config()
