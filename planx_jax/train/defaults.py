"""Every key an experiment config may have, with defaults: configs/<stage>.py start from `base_config(stage)`
and change values. A key not in here is an error (`check_keys`). Not a stage's numbers (those are the configs)."""

import ml_collections

from planx_jax.config_utils import unknown_key_error
from planx_jax.plan_tokens import PlanTokens

SFT_STAGES = ("planner_sft", "dit_sft", "dit_stage1", "end_to_end")
RL_STAGES = ("planner_grpo", "dit_flow_grpo")  # RL post-training (TempAct, ReaDe)
HIERARCHY_STAGE = "tempact"  # TempAct's planner-executor hierarchy: one planner_grpo and one dit_flow_grpo config
STAGES = SFT_STAGES + RL_STAGES + (HIERARCHY_STAGE,)


def _model(preset: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"preset": preset, "overrides": ml_collections.ConfigDict(), "checkpoint": ""})


def base_config(stage: str) -> ml_collections.ConfigDict:
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
  if stage == HIERARCHY_STAGE:
    return _hierarchy_config()
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.num_steps = 100
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
  c.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3, "async_save": True, "export_every": 0})
  c.log = ml_collections.ConfigDict({"every": 10, "tensorboard": True, "profile_start": -1, "profile_steps": 3})
  if stage in ("planner_sft", "end_to_end", "planner_grpo"):
    c.planner = _model("qwen2_5_1_5b")
    c.planner.tokenizer = ""  # a tokenizer directory; "" = the tiny test tokenizer
    c.ce_chunk = 512  # sequence positions per chunk of the chunked log-softmax (CE, RL log-probs)
  if stage in ("planner_sft", "end_to_end"):
    c.first_frame_drop = 0.5  # Plan-X: first-frame code embeddings zeroed with p = 0.5 (T2V / I2V hybrid)
  if stage in ("dit_sft", "dit_stage1", "end_to_end", "dit_flow_grpo"):
    c.dit = _model("wan2_2_ti2v_5b")
  if stage in ("dit_sft", "dit_stage1", "end_to_end"):
    c.timesteps = ml_collections.ConfigDict({"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 1.0})
    c.i2v_prob = 0.5  # first latent frame given (TI2V) with this probability where the example has one
  if stage == "dit_stage1":
    c.tatok = ml_collections.ConfigDict({"code_dim": 1536, "checkpoint": ""})
    c.text_drop = ml_collections.ConfigDict({"start": 1.0, "end": 0.5, "ramp_steps": 1000})
  if stage == "dit_sft":
    c.text_drop = 0.1  # text states replaced by zeros (the CFG negative) with this probability
  if stage in RL_STAGES:
    _rl_sections(c)
  if stage == "end_to_end":
    c.flow_weight = 1.0
    c.ce_weight = 0.1
    c.text_drop = 0.1
    c.dit_trainable = "all"
  return c


def _rl_sections(c: ml_collections.ConfigDict) -> None:
  """RL post-training: `rl` (group sampling, the surrogate, KL, advantages), `env` (where prompts and rewards come
  from). batch_size counts rows: planner_grpo rows are sampled plans (prompts x group_size), dit_flow_grpo rows are
  trained transitions (prompts x group_size x rl.train_steps)."""
  c.rl = ml_collections.ConfigDict({
      "group_size": 8,  # G plans / N videos per prompt (ReaDe 8 rollouts; TempAct N = 8 continuations)
      "reward": "world_plan" if c.stage == "planner_grpo" else "world_video",  # a name in planx_jax.rewards
      "advantage_scale": "group", "advantage_eps": 1e-4, "advantage_ddof": 1,  # TRL's conventions
      "advantage_clip": 0.0,  # 0 = off; Flow-GRPO clips at 5, TempAct's executor at 2
      "eps_low": 0.2, "eps_high": 0.2,  # PPO clip range (GSPO / Flow-GRPO use tiny ones)
      "beta": 0.0,  # KL weight to the frozen reference (the LoRA base, or the initial params)
      "kl": "k3", "log_ratio_clip": 20.0})  # one update per rollout batch (TRL's and Flow-GRPO's default)
  if c.stage == "planner_grpo":
    c.rl.level = "token"  # token (GRPO), sequence (GSPO), sequence_token (GSPO-token)
    c.rl.loss_type = "grpo"  # grpo / bnpo / dr_grpo / dapo
    c.rl.temperature = 1.0
  else:
    c.rl.sde = "flow_grpo"  # flow_grpo / wan / cps / dance
    c.rl.noise_level = 0.7
    c.rl.num_sampling_steps = 10
    c.rl.train_steps = 2  # denoising steps trained per video (a random window among the first 99 %: "fast")
    c.rl.shift = 3.0
    c.rl.guidance_scale = 4.0  # CFG in sampling and in the trained velocity (Flow-GRPO does both)
    c.rl.ratio_norm = False  # GRPO-Guard's RatioNorm
    c.rl.semantic_dim = 0  # > 0: a Plan-X DiT whose semantic branch reads TA-Tok codebook vectors of this width
  c.env = ml_collections.ConfigDict({
      "kind": "world",  # the demo world: verifiable rewards from the colour-segmentation judge
      "demo_dir": "",  # a `planx demo` output directory (its models/ seed the policy when checkpoints are unset)
      "split": "train", "num_prompts": 512, "seed": 0,
      "kmeans_frames": 0, "kmeans_iters": 0})  # TA-Tok k-means sizes; 0 = the demo's (codes match its models)


def _hierarchy_config() -> ml_collections.ConfigDict:
  """TempAct (Sec. 3.3): the planner's GSPO and the executor's Flow-GRPO configs, driven together by
  `planx_jax.rl.hierarchy` (rewards and prompts from planner_rl.env)."""
  c = ml_collections.ConfigDict()
  c.stage = HIERARCHY_STAGE
  c.seed = 0
  c.num_steps = 100
  c.planner_rl = base_config("planner_grpo")
  c.executor_rl = base_config("dit_flow_grpo")
  c.hierarchy = ml_collections.ConfigDict({
      "prompts_per_step": 2,
      "switch_min": 1, "switch_max": 2,  # the last context latent frame k, drawn per step (TempAct: k in [6, 12])
      "chunk_frames": 1,  # latent frames after the switch the executor is updated on (TempAct: the first chunk)
      "judge_weight": 0.15, "video_weight": 0.85})  # R_plan = 0.15 R_judge + 0.85 mean_n R_video
  c.checkpoint = ml_collections.ConfigDict({"every": 10, "keep": 2})
  c.log = ml_collections.ConfigDict({"tensorboard": True})
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
