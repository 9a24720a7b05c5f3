"""Plan-X stage: end-to-end. Planner hidden states at the planned codes feed the DiT's semantic branch; loss =
1.0 flow + 0.1 planner CE; both models train. `configs/end_to_end.py:<size>`: tiny or 7b_5b.

Real size starts from the stage outputs (--config.planner.checkpoint=DIR --config.dit.checkpoint=DIR).
"""

from planx_jax.train.defaults import base_config, set_pod_scale, set_tiny


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("end_to_end")
  c.optimizer.lr = 1e-5
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    set_tiny(c)
  elif size == "7b_5b":
    c.planner.preset = "qwen2_5_7b"
    c.dit.preset = "wan2_2_ti2v_5b"
    set_pod_scale(c)
    c.data.seq_len = 2048
    c.batch_size = 64
    c.num_steps = 10000
  else:
    raise ValueError(f"end_to_end size must be tiny or 7b_5b, got {size!r}")
  return c
