"""The demo's settings: its config (the world's settings plus each stage's steps and the generation settings) and
each training stage's experiment config at the world's tiny sizes. `configs/demo.py` serves them as config files.

Learning rates are the tiny models' (1e-3), not the paper's (5e-5 / 2e-5 at 1.5B-7B).
"""

import ml_collections

from planx_jax.train.defaults import base_config
from planx_jax.world.settings import (CODE_DIM, CODEBOOK_SIZE, DIT, LATENT_SHAPE, NUM_KEYFRAMES, PLANNER, SEQ_LEN,
                                      SHIFT, TEXT_SHAPE, world_config)

STAGE_NAMES = ("planner_sft", "dit_sft", "dit_stage1", "end_to_end")


def stage_config(stage: str, steps: int) -> ml_collections.ConfigDict:
  """One demo training stage: tiny models on the demo's TFDS records (data.tfds_dir is set by the demo)."""
  if stage not in STAGE_NAMES:
    raise ValueError(f"demo stages are {list(STAGE_NAMES)}, got {stage!r}")
  c = base_config(stage)
  c.num_steps = steps
  c.codebook_size = CODEBOOK_SIZE
  c.video_fps = 8.0
  c.mesh.data = -1
  c.data.source = "tfds"
  c.data.shapes.num_keyframes = NUM_KEYFRAMES
  c.data.shapes.latent_shape = LATENT_SHAPE
  c.data.shapes.text_shape = TEXT_SHAPE
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.checkpoint.every = 100
  c.checkpoint.keep = 1
  c.log.every = 25
  if "planner" in c:
    c.planner.preset = "tiny"
    c.planner.overrides = ml_collections.ConfigDict(PLANNER)
    c.data.seq_len = SEQ_LEN
    c.first_frame_drop = 0.0  # the demo is image-to-video: the planner always reads the first frame
    c.ce_chunk = 640
  if "dit" in c:
    c.dit.preset = "tiny"
    c.dit.overrides = ml_collections.ConfigDict(DIT)
    c.i2v_prob = 1.0  # TI2V: latent frame 0 is the given first frame
    c.timesteps.shift = SHIFT
  if stage == "planner_sft":
    c.batch_size = 8
  elif stage == "dit_sft":
    c.batch_size = 16
  elif stage == "dit_stage1":
    c.batch_size = 16
    c.tatok.code_dim = CODE_DIM
    c.text_drop.ramp_steps = steps // 2
  else:  # end_to_end
    c.batch_size = 8
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 10
  return c


def demo_config() -> ml_collections.ConfigDict:
  """`planx demo`'s config: the world's settings (world.settings.world_config), the steps of each stage and how the
  held-out videos are generated."""
  c = world_config()
  c.steps = ml_collections.ConfigDict({"planner_sft": 200, "dit_sft": 300, "dit_stage1": 150, "end_to_end": 60})
  c.generate = ml_collections.ConfigDict({"num_steps": 20, "guidance_scale": 4.0, "shift": SHIFT, "solver": "unipc",
                                          "temperature": 0.0, "batch_size": 8, "num_videos": 4})
  return c
