"""Plan-X stage: end-to-end. Planner hidden states at the planned codes feed the DiT's semantic branch; loss =
1.0 flow + 0.1 planner CE; both models train. `configs/end_to_end.py:<size>`: tiny or 7b_5b.

Real size starts from the stage outputs (--config.planner.checkpoint=DIR --config.dit.checkpoint=DIR).
"""

from planx_jax.train.defaults import base_config

PLAN_X_VOCAB = 217206


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("end_to_end")
  c.optimizer.lr = 1e-5
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    c.planner.preset = "tiny"
    c.dit.preset = "tiny"
    c.codebook_size = 64
    c.video_fps = 8.0
    c.data.seq_len = 1024
    c.data.shapes.num_keyframes = 2
    c.data.shapes.latent_shape = (4, 8, 8, 8)
    c.data.shapes.text_shape = (8, 32)
    c.batch_size = 4
    c.num_steps = 20
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 2
    c.ce_chunk = 256
    c.checkpoint.every = 10
    c.log.every = 5
  elif size == "7b_5b":
    c.planner.preset = "qwen2_5_7b"
    c.planner.overrides.vocab_size = PLAN_X_VOCAB
    c.dit.preset = "wan2_2_ti2v_5b"
    c.precision.compute_dtype = "bfloat16"
    c.remat = "full"
    c.data.source = "tfds"
    c.data.seq_len = 2048
    c.data.shapes.num_keyframes = 11
    c.data.shapes.latent_shape = (31, 44, 80, 48)
    c.data.shapes.text_shape = (512, 4096)
    c.batch_size = 64
    c.num_steps = 10000
    c.mesh.data = 1
    c.mesh.fsdp = -1
  else:
    raise ValueError(f"end_to_end size must be tiny or 7b_5b, got {size!r}")
  return c
