"""RL stage: Flow-GRPO for the DiT (TempAct Eq. 11; flow_grpo) on rollout batches of SDE transitions.

A row is one trained denoising step of one sampled video: the state x_s, the sample x_{s_prev} the SDE drew from
it, the log-prob of that draw under the sampling policy (`old_logp`, averaged over the scored latent elements),
the video's group-normalised advantage, and the conditions (text, the given first frame, optionally the semantic
tokens of a plan). The trained velocity is the one the sampler used (classifier-free guidance included), so on
policy the ratio is exactly 1. Not the sampling or the rewards (see `planx_jax.rl`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import dit
from planx_jax.losses import flow as flow_lib
from planx_jax.models.dit import DiT
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.dit_semantic import keyframe_positions
from planx_jax.sampling import flow_sde
from planx_jax.sampling.dit_sampling import per_token_timesteps
from planx_jax.sampling.flow_schedulers import euler_sigmas
from planx_jax.train.tasks import common
from planx_jax.train.tasks.base import Task

SDE_KINDS = ("flow_grpo", "wan", "cps", "dance")


def guided_velocity(dit_config: DiTConfig, params, x, timesteps, text_emb, guidance_scale: float,
                    semantic=None, positions=None) -> jax.Array:
  """v [B, F, H, W, C] fp32 at model timesteps [B, F] per latent frame (0 on given frames, as `sample_flow` feeds
  them): the DiT on the text (and semantic tokens), with CFG v_u + w (v_c - v_u) against zero text and no semantic
  tokens when w != 1."""
  timesteps = per_token_timesteps(dit_config, timesteps, x.shape)  # [B, L]
  model = DiT(dit_config)
  xin = x.astype(jnp.dtype(dit_config.dtype))
  sem = {} if semantic is None else dict(semantic=semantic, semantic_positions=positions)
  v_c = model.apply({"params": params}, xin, timesteps, text_emb, **sem).astype(jnp.float32)
  if guidance_scale == 1.0:
    return v_c
  v_u = model.apply({"params": params}, xin, timesteps, jnp.zeros_like(text_emb)).astype(jnp.float32)
  return v_u + guidance_scale * (v_c - v_u)


class DiTFlowGRPO(Task):
  stage = "dit_flow_grpo"
  batch_source = "rollout"  # SDE transitions of sampled videos (planx_jax.rl)

  @classmethod
  def add_config(cls, c) -> None:
    c.dit = common.model_section("wan2_2_ti2v_5b")
    common.add_rl_sections(c, reward="world_video")
    c.rl.sde = "flow_grpo"  # flow_grpo / wan / cps / dance
    c.rl.noise_level = 0.7
    c.rl.num_sampling_steps = 10
    c.rl.train_steps = 2  # denoising steps trained per video (a random window among the first 99 %: "fast")
    c.rl.shift = 3.0
    c.rl.guidance_scale = 4.0  # CFG in sampling and in the trained velocity (Flow-GRPO does both)
    c.rl.ratio_norm = False  # GRPO-Guard's RatioNorm
    c.rl.semantic_dim = 0  # > 0: a Plan-X DiT whose semantic branch reads TA-Tok codebook vectors of this width
  models = ("dit",)

  def __init__(self, config):
    super().__init__(config)
    rl = config.rl
    self.semantic_dim = int(rl.semantic_dim)
    self.dit_config = common.build_dit_config(config, self.semantic_dim or None)
    if rl.sde not in SDE_KINDS:
      raise ValueError(f"rl.sde must be one of {SDE_KINDS}, got {rl.sde!r}")
    if int(rl.group_size) < 2:
      raise ValueError(f"rl.group_size must be >= 2 (advantages are normalised within a group), got {rl.group_size}")
    self.train_steps = int(rl.train_steps)
    self.num_sampling_steps = int(rl.num_sampling_steps)
    if not 1 <= self.train_steps < self.num_sampling_steps:
      raise ValueError(f"rl.train_steps must be in [1, rl.num_sampling_steps - 1] (the last step is never trained), "
                       f"got {self.train_steps} of {self.num_sampling_steps}")
    self.rows_per_prompt = int(rl.group_size) * self.train_steps  # a row is a trained transition
    if config.batch_size % self.rows_per_prompt:
      raise ValueError(f"batch_size {config.batch_size} (transitions) is not a multiple of rl.group_size x "
                       f"rl.train_steps = {self.rows_per_prompt}")
    self.shapes = config.data.shapes
    self.sigmas, _ = euler_sigmas(self.num_sampling_steps, float(rl.shift))  # [T + 1], 1 -> 0
    k = int(self.shapes.num_keyframes)
    self.positions = None
    if self.semantic_dim:  # the plan's K keyframes of 81 codes, first frame included (stage-1 semantic input)
      self.positions = keyframe_positions(self.dit_config, tuple(self.shapes.latent_shape), list(range(k)),
                                          float(config.video_fps))  # [K * 81, 3]

  @property
  def num_semantic(self) -> int:
    return int(self.shapes.num_keyframes) * common.CODES_PER_KEYFRAME if self.semantic_dim else 0

  def init_params(self, rng) -> dict:
    if self.semantic_dim:
      return {"dit": common.init_dit_with_branch(self.dit_config, rng)}
    return {"dit": dit.init_base_stand_in(self.dit_config, rng)}

  def param_logical_axes(self) -> dict:
    return {"dit": dit.param_logical_axes(self.dit_config)}

  def pretrained_params(self) -> dict:
    load = common.load_dit if self.semantic_dim else common.load_base_dit
    loaded = load(self.config, self.dit_config)
    return {"dit": loaded} if loaded else {}

  def trainable(self, params):
    return jax.tree.map(lambda _: True, params)

  # --- rollout batches ------------------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> dict:
    b = batch_size
    latent = (b, *tuple(self.shapes.latent_shape))
    f = latent[1]
    f32 = np.dtype(np.float32)
    spec = {"latents": (latent, f32), "next_latents": (latent, f32), "sigma": ((b,), f32),
            "sigma_next": ((b,), f32), "old_logp": ((b,), f32), "advantages": ((b,), f32), "rewards": ((b,), f32),
            "text_emb": ((b, *tuple(self.shapes.text_shape)), f32), "frame_mask": ((b, f), f32),
            "logprob_mask": ((b, f), f32)}
    if self.config.rl.ratio_norm:
      spec["old_mean"] = (latent, f32)
    if float(self.config.rl.beta) > 0:
      spec["ref_mean"] = (latent, f32)
    if self.semantic_dim:
      spec["semantic"] = ((b, self.num_semantic, self.semantic_dim), f32)
    return spec

  def velocity(self, dit_params, latents, timesteps, text_emb, semantic=None) -> jax.Array:
    """The policy's velocity at model timesteps [B, F] (CFG at rl.guidance_scale, as sampled)."""
    positions = None
    if semantic is not None:
      positions = jnp.broadcast_to(jnp.asarray(self.positions, jnp.float32), (latents.shape[0], *self.positions.shape))
    return guided_velocity(self.dit_config, dit_params, latents, timesteps, text_emb,
                           float(self.config.rl.guidance_scale), semantic, positions)

  def transition(self, dit_params, batch) -> flow_sde.SDEStep:
    """The SDE step from batch["latents"] scored at batch["next_latents"]: log-prob [B] over the logprob_mask
    elements, mean and std."""
    timesteps = flow_lib.sigma_to_timestep(batch["sigma"][:, None] * batch["frame_mask"])  # [B, F]
    v = self.velocity(dit_params, batch["latents"], timesteps, batch["text_emb"], batch.get("semantic"))
    return self.sde_step(batch["latents"], v, batch["sigma"], batch["sigma_next"], prev_sample=batch["next_latents"],
                         mask=batch["logprob_mask"])

  def sde_step(self, latents, velocity, sigma, sigma_next, **kwargs) -> flow_sde.SDEStep:
    rl = self.config.rl
    level = float(rl.noise_level)  # a (flow_grpo, cps), DanceGRPO's eta (dance); wan's scale is sigma_max
    return flow_sde.sde_step(latents, velocity, sigma, sigma_next, kind=rl.sde, noise_level=level, eta=level,
                             sigma_max=float(self.sigmas[1]), **kwargs)

  def normalizers(self, batch) -> dict:
    return {"rows": jnp.asarray(batch["latents"].shape[0], jnp.int32)}

  def loss(self, params, batch, rng, step, normalizers):
    del rng, step
    rl = self.config.rl
    dit_params = self.effective_params(params)["dit"]
    out = self.transition(dit_params, batch)
    if rl.ratio_norm:
      log_ratio = flow_sde.ratio_norm_log_ratio(out.log_prob, batch["old_logp"], out.mean, batch["old_mean"],
                                                out.std, mask=batch["logprob_mask"])
    else:
      log_ratio = out.log_prob - batch["old_logp"]  # [B]
    if float(rl.log_ratio_clip) > 0:
      log_ratio = jnp.clip(log_ratio, -float(rl.log_ratio_clip), float(rl.log_ratio_clip))
    ratio = jnp.exp(log_ratio)
    adv = batch["advantages"]
    if float(rl.advantage_clip) > 0:
      adv = jnp.clip(adv, -float(rl.advantage_clip), float(rl.advantage_clip))
    clipped = jnp.clip(ratio, 1.0 - float(rl.eps_low), 1.0 + float(rl.eps_high))
    per_row = -jnp.minimum(ratio * adv, clipped * adv)  # [B]
    rows = normalizers["rows"].astype(jnp.float32)
    metrics = {"rl/policy_loss": jnp.sum(per_row) / rows, "rl/ratio": jnp.sum(ratio) / rows,
               "rl/clip_fraction": jnp.sum((ratio < 1.0 - float(rl.eps_low)) | (ratio > 1.0 + float(rl.eps_high)))
               / rows, "reward": jnp.sum(batch["rewards"]) / rows}
    if float(rl.beta) > 0:
      kl = flow_sde.mean_kl(out.mean, batch["ref_mean"], out.std, mask=batch["logprob_mask"])  # [B]
      per_row = per_row + float(rl.beta) * kl
      metrics["rl/kl"] = jnp.sum(kl) / rows
    return jnp.sum(per_row) / rows, metrics

  def model_flops(self, batch_size: int) -> float:
    s = self.shapes
    tokens = common.video_tokens(self.dit_config, s.latent_shape)
    n = dit.param_count(self.dit_config)
    passes = 1 if float(self.config.rl.guidance_scale) == 1.0 else 2  # CFG: a conditional and a null pass
    return passes * common.dit_flops(self.dit_config, n, n if not self.lora_rank else 0, batch_size, tokens,
                                     s.text_shape[0], self.num_semantic)

  def export(self, params, directory) -> None:
    common.export_dit(self.dit_config, self.effective_params(params)["dit"], directory)
