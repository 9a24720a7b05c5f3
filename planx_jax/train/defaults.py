"""Every key an experiment config may have, with defaults: the sections all stages share here, each stage's own from
its task (`Task.add_config`) or composite experiment; configs/<stage>.py start from `base_config(stage)` and change
values. A key not in the schema is an error (`check_keys`). Not a stage's numbers (those are the configs)."""

import ml_collections

from planx_jax.config_utils import unknown_key_error
from planx_jax.plan_tokens import PlanTokens
from planx_jax.train.registry import EXPERIMENTS
from planx_jax.train.tasks import TASKS

RL_STAGES = tuple(stage for stage, task in TASKS.items() if task.batch_source == "rollout")  # trained on rollouts


def stages() -> list[str]:
  """Every stage a config may name: the tasks' and the registered composite experiments' (planx_jax.rl: tempact)."""
  return [*TASKS, *EXPERIMENTS]


def run_config(stage: str) -> ml_collections.ConfigDict:
  """The sections every experiment has: stage, seed, num_steps, checkpoints and logging (`train.loop`)."""
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.num_steps = 100
  c.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3, "async_save": True, "export_every": 0})
  c.log = ml_collections.ConfigDict({"every": 10, "tensorboard": True, "profile_start": -1, "profile_steps": 3})
  return c


def base_config(stage: str) -> ml_collections.ConfigDict:
  """The stage's schema with defaults: a composite experiment's `default_config()`, or the shared run and training
  sections plus the task's own (`Task.add_config`)."""
  if stage in EXPERIMENTS:
    return EXPERIMENTS[stage].default_config()
  if stage not in TASKS:
    raise ValueError(f"unknown stage {stage!r}; stages are {stages()}")
  c = run_config(stage)
  c.batch_size = 8  # global, over all processes
  c.microbatches = 1  # gradient accumulation
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "context": 1, "tensor": 1})
  c.dcn_mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "context": 1, "tensor": 1})  # slices per axis
  c.sharding_rules = ()  # ((logical name, mesh axes), ...) on top of parallel.rules.DEFAULT_RULES
  c.precision = ml_collections.ConfigDict({"compute_dtype": "float32"})  # params stay fp32
  c.remat = "none"
  c.optimizer = ml_collections.ConfigDict({
      "lr": 1e-4, "schedule": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1, "b1": 0.9, "b2": 0.999,
      "eps": 1e-8, "weight_decay": 0.0, "clip_norm": 1.0})
  c.lora = ml_collections.ConfigDict({"rank": 0, "alpha": 16.0, "targets": ("attention", "mlp")})
  c.codebook_size = 65536  # TA-Tok codes
  c.video_fps = 24.0
  c.data = ml_collections.ConfigDict({
      "source": "synthetic", "tfds_dir": "", "split": "train", "shuffle_seed": 0, "num_records": 64,
      "seq_len": 2048,
      "shapes": ml_collections.ConfigDict({"num_keyframes": 3, "latent_shape": (4, 8, 8, 48),
                                            "text_shape": (512, 4096)})})
  TASKS[stage].add_config(c)
  return c


def check_keys(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key of `config` the stage's schema does not have."""
  _compare(config, base_config(config.get("stage", "")), "config")


def _compare(config, schema, where: str) -> None:
  for key in config.keys():
    if key not in schema:
      raise unknown_key_error(where, key, list(schema.keys()))
    if isinstance(schema[key], ml_collections.ConfigDict) and key != "overrides":
      if not isinstance(config[key], ml_collections.ConfigDict):
        raise ValueError(f"{where}.{key} must be a group of fields, got {config[key]!r}")
      _compare(config[key], schema[key], f"{where}.{key}")


# Embedding rows of a real planner: Qwen2.5's 151665 entries + <im_start> <im_end> <S0..2> + 65536 codes.
PLAN_X_VOCAB = PlanTokens().vocab_size  # 217206


def set_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny models and shapes every stage shares on CPU (tests, the default `planx train`): 2 keyframes, 64 codes,
  latents [4, 8, 8, 8], text [8, 32], one planner conversation per 1024-token row, 20 steps at lr 1e-3."""
  for section in ("planner", "dit"):
    if section in c:
      c[section].preset = "tiny"
  c.codebook_size = 64
  if "dit" in c:
    c.video_fps = 8.0  # keyframe t' -> latent frame t' on the tiny grid
  if "planner" in c:
    c.data.seq_len = 1024
  c.data.shapes.num_keyframes = 2
  c.data.shapes.latent_shape = (4, 8, 8, 8)
  c.data.shapes.text_shape = (8, 32)
  c.batch_size = 4
  c.num_steps = 20
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 2
  c.checkpoint.every = 10
  c.log.every = 5
  if "ce_chunk" in c:
    c.ce_chunk = 256
  return c


def set_pod_scale(c: ml_collections.ConfigDict, *, num_keyframes: int = 11, video: bool = True
                  ) -> ml_collections.ConfigDict:
  """Real-size settings every stage shares: bf16 compute, full remat, TFDS records, FSDP over all devices, the
  Plan-X vocabulary; `video` sets Wan2.2's 704x1280, 121-frame latents [31, 44, 80, 48] and umT5 [512, 4096]."""
  c.precision.compute_dtype = "bfloat16"
  c.remat = "full"
  c.data.source = "tfds"
  c.data.shapes.num_keyframes = num_keyframes  # 5 s at 2 FPS + the first frame
  if video:
    c.data.shapes.latent_shape = (31, 44, 80, 48)
    c.data.shapes.text_shape = (512, 4096)
  if "planner" in c:
    c.planner.overrides.vocab_size = PLAN_X_VOCAB
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
