"""Plan-X stage: DiT stage 1. Frozen Wan2.2-TI2V-5B base, only the semantic branch trains, on TA-Tok codebook
vectors of the keyframe codes; text drop 1.0 -> 0.5; lr 2e-5. `configs/dit_stage1.py:<size>`: tiny or 5b.

Real size starts from a converted Wan checkpoint (--config.dit.checkpoint=DIR) and TA-Tok
(--config.tatok.checkpoint=DIR).
"""

from planx_jax.train.defaults import base_config


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("dit_stage1")
  c.optimizer.lr = 2e-5
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 100
  if size == "tiny":
    c.dit.preset = "tiny"
    c.tatok.code_dim = 16
    c.codebook_size = 64
    c.video_fps = 8.0  # keyframe t' -> latent frame t' on the tiny grid
    c.data.shapes.num_keyframes = 2
    c.data.shapes.latent_shape = (4, 8, 8, 8)
    c.data.shapes.text_shape = (8, 32)
    c.batch_size = 4
    c.num_steps = 20
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 2
    c.text_drop.ramp_steps = 10
    c.checkpoint.every = 10
    c.log.every = 5
  elif size == "5b":
    c.dit.preset = "wan2_2_ti2v_5b"
    c.precision.compute_dtype = "bfloat16"
    c.remat = "full"
    c.data.source = "tfds"
    # 704x1280, 121 frames at 24 fps -> latents 31 x 44 x 80 x 48; 5 s of keyframes at 2 FPS + frame 0.
    c.data.shapes.num_keyframes = 11
    c.data.shapes.latent_shape = (31, 44, 80, 48)
    c.data.shapes.text_shape = (512, 4096)
    c.batch_size = 64
    c.num_steps = 20000
    c.text_drop.ramp_steps = 5000
    c.mesh.data = 1
    c.mesh.fsdp = -1
  else:
    raise ValueError(f"dit_stage1 size must be tiny or 5b, got {size!r}")
  return c
