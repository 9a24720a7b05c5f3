"""Plan-X stage: planner SFT (Eq. 2). `configs/planner_sft.py:<size>` with size tiny (CPU tests), 1.5b or 7b.

Real sizes start from a converted Tar / Qwen2.5 planner checkpoint (--config.planner.checkpoint=DIR, with
--config.planner.tokenizer=DIR) whose vocabulary holds the 217206 Plan-X rows; lr 5e-5 as in the paper.
"""

from planx_jax.train.defaults import base_config, set_pod_scale, set_tiny

PRESETS = {"1.5b": "qwen2_5_1_5b", "7b": "qwen2_5_7b"}


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("planner_sft")
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    set_tiny(c)
  elif size in PRESETS:
    c.planner.preset = PRESETS[size]
    set_pod_scale(c, video=False)  # the planner reads codes and texts only
    c.data.seq_len = 4096
    c.batch_size = 256
    c.num_steps = 20000
  else:
    raise ValueError(f"planner_sft size must be tiny, 1.5b or 7b, got {size!r}")
  return c
