"""Plan-X stage: planner SFT (Eq. 2). `configs/planner_sft.py:<size>` with size tiny (CPU tests), 1.5b or 7b.

Real sizes start from a converted Tar / Qwen2.5 planner checkpoint (--config.planner.checkpoint=DIR, with
--config.planner.tokenizer=DIR) whose vocabulary holds the 217206 Plan-X rows; lr 5e-5 as in the paper.
"""

from planx_jax.train.defaults import base_config

PLAN_X_VOCAB = 217206  # 151665 Qwen2.5 entries + <im_start> <im_end> <S0..2> + 65536 codes


def get_config(arg=None):
  size = arg or "tiny"
  c = base_config("planner_sft")
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.0
  if size == "tiny":
    c.planner.preset = "tiny"
    c.codebook_size = 64
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
  elif size in ("1.5b", "7b"):
    c.planner.preset = {"1.5b": "qwen2_5_1_5b", "7b": "qwen2_5_7b"}[size]
    c.planner.overrides.vocab_size = PLAN_X_VOCAB
    c.precision.compute_dtype = "bfloat16"
    c.remat = "full"
    c.data.source = "tfds"
    c.data.seq_len = 4096
    c.data.shapes.num_keyframes = 11  # 5 s at 2 FPS + the first frame
    c.batch_size = 256
    c.num_steps = 20000
    c.mesh.data = 1
    c.mesh.fsdp = -1
  else:
    raise ValueError(f"planner_sft size must be tiny, 1.5b or 7b, got {size!r}")
  return c
