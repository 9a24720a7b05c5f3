"""Plan-X stage: DiT stage 1. Frozen Wan2.2-TI2V-5B base, only the semantic branch trains, on TA-Tok codebook
vectors of the keyframe codes; text drop 1.0 -> 0.5; lr 2e-5. `configs/dit_stage1.py:<size>`: tiny or 5b.

Real size starts from a converted Wan checkpoint (--config.dit.checkpoint=DIR) and TA-Tok
(--config.tatok.checkpoint=DIR).
"""

from planx_jax.train.defaults import base_config, set_pod_scale, set_tiny


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("dit_stage1")
  c.optimizer.lr = 2e-5
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    set_tiny(c)
    c.tatok.code_dim = 16
    c.text_drop.ramp_steps = 10
  elif size == "5b":
    c.dit.preset = "wan2_2_ti2v_5b"
    set_pod_scale(c)
    c.batch_size = 64
    c.num_steps = 20000
    c.text_drop.ramp_steps = 5000
  else:
    raise ValueError(f"dit_stage1 size must be tiny or 5b, got {size!r}")
  return c
