"""Pieces the training tasks share: model configs, inits and checkpoints from the experiment config, the planner's
first-frame dropout and cross-entropy, the DiT flow loss with first-frame conditioning and text drop, and model
FLOP estimates. Not the step (train/step.py) and not the data (data/pipeline.py)."""

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from planx_jax import dit
from planx_jax import planner
from planx_jax.conditioning import first_frame_mask
from planx_jax.data.conversation import PLAN_FRAME_CODES
from planx_jax.losses import flow as flow_lib
from planx_jax.losses.lm import chunked_masked_nll, next_token_targets
from planx_jax.models.dit import DiT
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.dit_semantic import add_semantic_branch, copy_text_to_semantic
from planx_jax.models.planner import Planner
from planx_jax.models.planner_config import PlannerConfig

# Config fields of a model section: a preset name, field overrides, an optional checkpoint to start from.
MODEL_SECTION_KEYS = ("preset", "overrides", "checkpoint")
CODES_PER_KEYFRAME = PLAN_FRAME_CODES  # 9 x 9 TA-Tok scale-2 codes
# DiT config fields a checkpoint must share with the run (semantic_in_dim is checked after adding a branch).
DIT_CHECKED_FIELDS = ("dim", "num_layers", "in_channels", "text_dim", "ffn_dim", "patch_size", "semantic_in_dim")


# --- config sections (`Task.add_config`) --------------------------------------------------------------------

def model_section(preset: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"preset": preset, "overrides": ml_collections.ConfigDict(), "checkpoint": ""})


def add_planner_sections(c: ml_collections.ConfigDict) -> None:
  """The planner (Qwen2.5 1.5B), its tokenizer and the chunk of its chunked log-softmax."""
  c.planner = model_section("qwen2_5_1_5b")
  c.planner.tokenizer = ""  # a tokenizer directory; "" = the tiny test tokenizer
  c.ce_chunk = 512  # sequence positions per chunk of the chunked log-softmax (CE, RL log-probs)


def add_flow_sections(c: ml_collections.ConfigDict, text_drop: tuple[float, float, int]) -> None:
  """The DiT (Wan2.2 TI2V 5B) trained on rectified flow: timestep sampling, TI2V, text drop (start, end, ramp)."""
  c.dit = model_section("wan2_2_ti2v_5b")
  c.timesteps = ml_collections.ConfigDict({"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 1.0})
  c.i2v_prob = 0.5  # first latent frame given (TI2V) with this probability where the example has one
  # Text states replaced by zeros (the CFG negative) with probability `start` at step 0, linear to `end` at
  # `ramp_steps`, `end` afterwards (start = end: a constant probability).
  start, end, ramp_steps = text_drop
  c.text_drop = ml_collections.ConfigDict({"start": start, "end": end, "ramp_steps": ramp_steps})


def add_rl_sections(c: ml_collections.ConfigDict, reward: str) -> None:
  """RL post-training: `rl` (group sampling, the surrogate, KL, advantages), `env` (where prompts and rewards come
  from). batch_size counts rows: planner_grpo rows are sampled plans (prompts x group_size), dit_flow_grpo rows are
  trained transitions (prompts x group_size x rl.train_steps)."""
  c.rl = ml_collections.ConfigDict({
      "group_size": 8,  # G plans / N videos per prompt (ReaDe 8 rollouts; TempAct N = 8 continuations)
      "reward": reward,  # a name in planx_jax.rewards
      "advantage_scale": "group", "advantage_eps": 1e-4, "advantage_ddof": 1,  # TRL's conventions
      "advantage_clip": 0.0,  # 0 = off; Flow-GRPO clips at 5, TempAct's executor at 2
      "eps_low": 0.2, "eps_high": 0.2,  # PPO clip range (GSPO / Flow-GRPO use tiny ones)
      "beta": 0.0,  # KL weight to the frozen reference (the LoRA base, or the initial params)
      "kl": "k3", "log_ratio_clip": 20.0})  # one update per rollout batch (TRL's and Flow-GRPO's default)
  c.env = ml_collections.ConfigDict({
      "kind": "world",  # the demo world: verifiable rewards from the colour-segmentation judge
      "demo_dir": "",  # a `planx demo` output directory (its models/ seed the policy when checkpoints are unset)
      "split": "train", "num_prompts": 512, "seed": 0,
      "kmeans_frames": 0, "kmeans_iters": 0})  # TA-Tok k-means sizes; 0 = the demo's (codes match its models)


def text_drop(config, step) -> jax.Array:
  """The text-drop probability at `step` (traced) from the `text_drop` section."""
  t = config.text_drop
  return flow_lib.text_drop_prob(step, float(t.start), float(t.end), ramp_steps=int(t.ramp_steps))


def model_config(cls, section, compute_dtype: str, remat: str, **extra):
  """A PlannerConfig / DiTConfig from a config section {preset, overrides} with the run's precision and remat."""
  overrides = dict(section.overrides.to_dict() if hasattr(section.overrides, "to_dict") else section.overrides)
  overrides.setdefault("dtype", compute_dtype)
  overrides.setdefault("remat", remat)
  overrides.update(extra)
  return cls.preset(section.preset, **overrides)


def read_checkpoint(section: str, path: str, load, expected, fields, adapt=None) -> dict:
  """Host params of `<section>.checkpoint` checked against the run's model config; {} when no path is set.

  Args:
    load: path -> (config, params), the model's checkpoint reader.
    expected: the config the run builds; `fields` must match it.
    adapt: optional (config, params) -> (config, params) applied before the check (e.g. add a branch).
  """
  if not path:
    return {}
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{section}.checkpoint {path} is not a directory")
  loaded_config, params = load(path)
  if adapt is not None:
    loaded_config, params = adapt(loaded_config, params)
  for field in fields:
    if getattr(loaded_config, field) != getattr(expected, field):
      raise ValueError(f"{section}.checkpoint {path} has {field}={getattr(loaded_config, field)}, the config "
                       f"{getattr(expected, field)}")
  logging.info("%s: starting from %s", section, path)
  return jax.tree.map(np.asarray, params)


# --- planner ------------------------------------------------------------------------------------------------

def build_planner_config(config) -> PlannerConfig:
  return model_config(PlannerConfig, config.planner, config.precision.compute_dtype, config.remat)


def load_planner(config, planner_config: PlannerConfig) -> dict:
  """Host params from `planner.checkpoint` (a planx planner checkpoint), checked against the run's config."""
  def load(path):
    loaded_config, params, _ = planner.load_checkpoint(path, scan_layers=planner_config.scan_layers)
    return loaded_config, params

  return read_checkpoint("planner", config.planner.checkpoint, load, planner_config,
                         ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"))


def first_frame_zero_mask(rng, batch, drop_prob: float) -> jax.Array:
  """[B, L] bool: the first-frame code tokens whose embeddings are zeroed (Plan-X's T2V / I2V hybrid).

  Each conversation (row, segment id) drops its first frame with probability `drop_prob`; conversations without
  a real first frame (`first_frame_given` False) always do.
  """
  b, l = batch["token_ids"].shape
  dropped = jax.random.bernoulli(rng, drop_prob, (b, l + 1))  # one draw per (row, segment id)
  per_token = jnp.take_along_axis(dropped, batch["segment_ids"], axis=1)  # [B, L]
  return batch["first_frame_mask"] & (per_token | ~batch["first_frame_given"])


def planner_head(config: PlannerConfig, params) -> tuple[jax.Array, str]:
  if config.tie_word_embeddings:
    return params["embed"]["embedding"], "vh"
  return params["lm_head"]["kernel"], "hv"


def planner_hidden(config: PlannerConfig, params, batch, zero_mask) -> jax.Array:
  """Final hidden states [B, L, H] of the planner over a (packed) batch."""
  return Planner(config).apply({"params": params}, batch["token_ids"], batch["positions"], batch["segment_ids"],
                               zero_mask, method="hidden_states")


def planner_nll_sum(config: PlannerConfig, params, hidden, batch, chunk_size: int) -> jax.Array:
  """Sum of -log p over the batch's target code tokens (Plan-X Eq. 2), fp32."""
  targets, mask = next_token_targets(batch["token_ids"], batch["loss_mask"])
  head, layout = planner_head(config, params)
  return chunked_masked_nll(hidden, head, targets, mask, head_layout=layout, chunk_size=chunk_size).nll_sum


def num_target_tokens(batch) -> jax.Array:
  """How many tokens the CE counts in a whole batch (targets are loss_mask[:, 1:])."""
  return jnp.sum(batch["loss_mask"][:, 1:], dtype=jnp.int32)


# --- DiT ----------------------------------------------------------------------------------------------------

def build_dit_config(config, semantic_in_dim: int | None = None) -> DiTConfig:
  """The run's DiTConfig; `semantic_in_dim` set: a Plan-X DiT whose semantic branch reads vectors of that width."""
  extra = {} if semantic_in_dim is None else {"semantic_in_dim": int(semantic_in_dim)}
  return model_config(DiTConfig, config.dit, config.precision.compute_dtype, config.remat, **extra)


def init_dit_with_branch(dit_config: DiTConfig, rng) -> dict:
  """Random (jittable) DiT params standing in for a pretrained base (`dit.init_base_stand_in`), whose semantic
  k / v / norm start as copies of the text ones (Plan-X 6.2)."""
  return copy_text_to_semantic(dit.init_base_stand_in(dit_config, rng))


def load_dit_checkpoint(path, dit_config: DiTConfig):
  loaded_config, params, _ = dit.load_checkpoint(path, scan_layers=dit_config.scan_layers)
  return loaded_config, params


def load_dit(config, dit_config: DiTConfig) -> dict:
  """Host params from `dit.checkpoint` (a planx DiT checkpoint, with or without the semantic branch) for a Plan-X
  DiT: a base checkpoint gets the branch added."""
  def with_branch(loaded_config, params):
    if loaded_config.semantic_in_dim is None:
      loaded_config, params = add_semantic_branch(loaded_config, params, dit_config.semantic_in_dim)
    return loaded_config, params

  return read_checkpoint("dit", config.dit.checkpoint, lambda p: load_dit_checkpoint(p, dit_config), dit_config,
                         DIT_CHECKED_FIELDS, adapt=with_branch)


def load_base_dit(config, dit_config: DiTConfig) -> dict:
  """Host params from `dit.checkpoint`, which must be a base DiT (no semantic branch) of the configured shape."""
  def no_branch(loaded_config, params):
    if loaded_config.semantic_in_dim is not None:
      raise ValueError(f"dit.checkpoint {config.dit.checkpoint} has a semantic branch; dit_sft trains the base DiT "
                       "without one")
    return loaded_config, params

  return read_checkpoint("dit", config.dit.checkpoint, lambda p: load_dit_checkpoint(p, dit_config), dit_config,
                         DIT_CHECKED_FIELDS, adapt=no_branch)


def timestep_sampling(config) -> flow_lib.TimestepSampling:
  t = config.timesteps
  return flow_lib.TimestepSampling(kind=t.kind, mean=float(t.mean), std=float(t.std), shift=float(t.shift))


def flow_loss_per_example(rng, dit_config: DiTConfig, dit_params, batch, semantic, positions, semantic_mask=None, *,
                          text_drop,
                          i2v_prob: float, sampling: flow_lib.TimestepSampling) -> tuple[jax.Array, jax.Array]:
  """Rectified-flow loss (Plan-X Eq. 4) of each example and whether its text was dropped.

  The first latent frame is given (TI2V: noise level 0, not counted) with probability `i2v_prob` where the
  example has a first frame; text embeddings are replaced by zeros with probability `text_drop`.

  Returns: per-example mean squared velocity error [B] fp32, text dropped [B] bool.
  """
  x0 = batch["latents"]  # [B, F, H, W, C]
  b, f = x0.shape[:2]
  k_noise, k_sigma, k_i2v, k_text = jax.random.split(rng, 4)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  sigma = sampling.sample(k_sigma, (b,))  # [B]
  i2v = jax.random.bernoulli(k_i2v, i2v_prob, (b,)) & batch["has_first_frame"]
  frame_mask = first_frame_mask(b, f, i2v.astype(jnp.int32))  # [B, F], 0 on the given frame
  x_s = flow_lib.interpolate(x0, noise, flow_lib.per_frame_sigmas(sigma, frame_mask))
  pt, ph, pw = dit_config.patch_size
  tokens_per_frame = (x0.shape[2] // ph) * (x0.shape[3] // pw)
  if pt != 1:
    raise ValueError(f"per-token timesteps need a temporal patch of 1, got patch_size {dit_config.patch_size}")
  timestep = flow_lib.sigma_to_timestep(flow_lib.per_token_sigmas(sigma, frame_mask, tokens_per_frame))
  text, dropped = flow_lib.drop_condition(k_text, batch["text_emb"], 0.0, text_drop)
  pred = DiT(dit_config).apply({"params": dit_params}, x_s.astype(dit_config.dtype), timestep, text, semantic,
                               positions, semantic_mask)
  error = jnp.square(pred.astype(jnp.float32) - flow_lib.velocity_target(x0, noise))  # [B, F, H, W, C]
  per_frame = jnp.sum(error, axis=(2, 3, 4)) * frame_mask  # [B, F]
  count = jnp.sum(frame_mask, axis=1) * np.prod(x0.shape[2:])  # [B]
  return jnp.sum(per_frame, axis=1) / jnp.maximum(count, 1.0), dropped


def mean_flow_loss(per_example, dropped, normalizers) -> tuple[jax.Array, dict]:
  """Whole-batch mean of the per-example flow losses and the text-drop rate (sums over microbatches)."""
  n = normalizers["examples"].astype(jnp.float32)
  loss = jnp.sum(per_example) / n
  return loss, {"flow_loss": loss, "text_dropped": jnp.sum(dropped) / n}


def export_dit(dit_config: DiTConfig, params, directory) -> None:
  """The DiT as a diffusers directory `dit_diffusers/` (with semantic_branch.* when it has the branch)."""
  dit.save_diffusers(dit_config, jax.tree.map(np.asarray, params), os.path.join(directory, "dit_diffusers"),
                         overwrite=True)


# --- FLOP estimates -----------------------------------------------------------------------------------------

def planner_flops(config: PlannerConfig, num_params: int, batch: int, length: int, trainable: bool) -> float:
  """Training FLOPs of one planner pass: 2 N T forward matmuls (+ the head for tied embeddings) and causal
  attention, times 3 when its weights are trained (2 when only activation gradients flow)."""
  tokens = batch * length
  matmul_params = num_params - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)
  forward = 2.0 * matmul_params * tokens
  forward += 2.0 * batch * length * length * config.num_heads * config.head_dim * config.num_layers  # causal
  return forward * (3.0 if trainable else 2.0)


def video_tokens(config: DiTConfig, latent_shape) -> int:
  """DiT tokens of one clip: latent frames x rows x columns, each divided by the patch."""
  pt, ph, pw = config.patch_size
  return (latent_shape[0] // pt) * (latent_shape[1] // ph) * (latent_shape[2] // pw)


def dit_flops(config: DiTConfig, num_params: int, num_trainable: int, batch: int, tokens: int, text_len: int,
              semantic_len: int) -> float:
  """Training FLOPs of one DiT pass: forward 2 N L + attention; backward 2 N L for activations plus 2 N_train L
  for weight gradients."""
  n, d = config.num_layers, config.dim
  attention = 4.0 * batch * tokens * (tokens + text_len + semantic_len) * d * n
  forward = 2.0 * num_params * batch * tokens + attention
  return forward + (2.0 * num_params * batch * tokens + attention) + 2.0 * num_trainable * batch * tokens
