"""Stage: DiT SFT. The base Wan DiT (no semantic branch) fine-tuned on the text (+ first frame) alone: the
backbone Plan-X's semantic branch is added to, and the "Wan 2.2 + SFT" baseline of Plan-X Table 1.
`configs/dit_sft.py:<size>`: tiny or 5b.

Real size starts from a converted Wan checkpoint (--config.dit.checkpoint=DIR).
"""

from planx_jax.train.defaults import base_config, set_pod_scale, set_tiny


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("dit_sft")
  c.optimizer.lr = 2e-5
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    set_tiny(c)
  elif size == "5b":
    c.dit.preset = "wan2_2_ti2v_5b"
    set_pod_scale(c)
    c.batch_size = 64
    c.num_steps = 20000
  else:
    raise ValueError(f"dit_sft size must be tiny or 5b, got {size!r}")
  return c
