"""The CPU demo: a tiny Plan-X trained on the built-in synthetic world (`planx demo`), and its stages as experiment
configs. `configs/demo.py` (or `:demo`) is the demo's own config; `configs/demo.py:<stage>` is one of its
training stages (planner_sft, dit_sft, dit_stage1, end_to_end) for `planx train` on the demo's records
(--config.data.tfds_dir=<demo out>/data).

Sizes: 64x64 frames, 17 frames at 8 fps (5 keyframes at 2 FPS), pixel codec latents [5, 16, 16, 16] (4x4 pixels x 4
frames per block, its 16 leading principal components, later frames as changes from the first), umT5 states
[40, 32], 128 TA-Tok codes. Learning rates are the tiny models' (1e-3), not the paper's (5e-5 / 2e-5 at 1.5B-7B).
"""

import ml_collections

from planx_jax.train.defaults import base_config

STAGE_NAMES = ("planner_sft", "dit_sft", "dit_stage1", "end_to_end")
CODEBOOK_SIZE = 128
NUM_KEYFRAMES = 5  # frames 0, 4, 8, 12, 16 of the 17-frame, 8 fps clips
LATENT_SHAPE = (5, 16, 16, 16)  # pixel codec: 4x4 px x 4 frames per block -> 16 principal components
TEXT_SHAPE = (40, 32)  # tiny umT5: 40 tokens of width 32
SEQ_LEN = 1280  # the longest demo conversation is 1251 tokens (729 first-frame codes + 4 x 84 plan tokens + text)
# TA-Tok codes are as wide as the planner (as Tar's codebook is for the 1.5B LLM), so the stage-1 semantic branch
# (codebook vectors in) carries over to end-to-end training (planner hidden states in) unchanged.
CODE_DIM = 64
# The sampler's timestep shift (UniPC, 20 steps); the DiT stages draw their training noise levels logit-normal with
# the same shift, so training covers the high noise levels where sampling spends its first steps (with shift 1
# almost no training example has s > 0.9, and the demo's DiTs left blocky noise over every generated frame).
SHIFT = 3.0
# Sized for a 2-core CPU (about 25 GFLOP/s): a planner example (1251 tokens) costs ~3 GFLOP to train, a DiT
# example (320 video tokens) ~0.5 GFLOP. A DiT token carries 2x2 latent cells x 16 channels = 64 values, no more than
# the DiT width (with the lossless 192-channel codec a token's 768 values could not pass a width-64 model).
PLANNER = {"vocab_size": 536, "hidden_size": CODE_DIM, "intermediate_size": 192, "num_layers": 2, "num_heads": 2,
           "num_kv_heads": 1, "head_dim": 32, "max_position_embeddings": 2048}
DIT = {"in_channels": 16, "out_channels": 16, "text_dim": 32, "num_heads": 4, "head_dim": 16, "ffn_dim": 128,
       "num_layers": 3, "freq_dim": 64, "rope_max_seq_len": 64}


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


def demo_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.world = ml_collections.ConfigDict({"seed": 0, "num_train": 512, "num_heldout": 24})
  # TA-Tok: the tiny SigLIP tower with random weights (position table zeroed, codes depend on content), layer 1
  # features, and a codebook fit by spherical k-means on the training frames.
  c.tatok = ml_collections.ConfigDict({"codebook_size": CODEBOOK_SIZE, "code_dim": CODE_DIM, "select_layer": 1,
                                       "kmeans_iters": 15, "kmeans_frames": 96})
  c.text_len = TEXT_SHAPE[0]
  # Latent frames after the first hold their change from it (zero where the scene is static): a DiT trained for
  # minutes on CPU learns motion, not copying the first frame forward.
  c.codec = ml_collections.ConfigDict({"spatial": 4, "temporal": 4, "channels": 16, "delta": True})
  c.steps = ml_collections.ConfigDict({"planner_sft": 200, "dit_sft": 300, "dit_stage1": 150, "end_to_end": 60})
  c.generate = ml_collections.ConfigDict({"num_steps": 20, "guidance_scale": 4.0, "shift": SHIFT, "solver": "unipc",
                                          "temperature": 0.0, "batch_size": 8, "num_videos": 4})
  return c
