"""Flow-GRPO's stochastic sampler for the video DiT: one SDE denoising step with its Gaussian log-prob, mean and std
(Flow-GRPO, Wan, CPS and DanceGRPO noise), the per-step KL, RatioNorm, the trained-step window and the rollout loop.

Not the RL objective, advantages or trainer (losses/rl.py, train/); not the ODE samplers (flow_sampler.py).
Convention: x_s = (1 - s) x0 + s eps, v = eps - x0; a step goes from s to s_prev < s, dt = s_prev - s < 0.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import describe, f32, require_float_like, require_int, require_latents
from planx_jax.conditioning import apply_fixed_frames, first_frame_mask
from planx_jax.sampling.flow_sampler import check_sampler_args, guided_velocity
from planx_jax.sampling.flow_schedulers import euler_sigmas

SDE_KINDS = ("flow_grpo", "wan", "cps", "dance")
# velocity_fn(latents [B, F, H, W, C] fp32, timesteps [B] or [B, F] fp32, cond) -> v [B, F, H, W, C]
VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class SDEStep(NamedTuple):
  """One stochastic step x_s -> x_{s_prev} ~ N(mean, std^2), all fp32."""

  prev_sample: jax.Array  # [B, F, H, W, C] the drawn (or the scored, given) sample
  log_prob: jax.Array  # [B] Gaussian log-density of stop_gradient(prev_sample), averaged over the masked elements
  mean: jax.Array  # [B, F, H, W, C]
  std: jax.Array  # [B, 1, 1, 1, 1]; 0 on a deterministic step (then prev_sample = mean and log_prob = 0)


class SDETrajectory(NamedTuple):
  """A rollout of `sample_sde`: everything the trainer needs to score its transitions again under new params."""

  latents: jax.Array  # [T + 1, B, F, H, W, C] x_0 = the (fixed-frame) noise .. x_T = the final latents
  log_probs: jax.Array  # [T, B] log-prob of latents[i + 1] given latents[i]; 0 on deterministic steps
  means: jax.Array | None  # [T, B, F, H, W, C] the step means (the Euler step on deterministic steps); or None
  sigmas: jax.Array  # [T + 1] fp32 noise levels of the Euler grid, the last one 0
  timesteps: jax.Array  # [T] fp32 model timesteps 1000 s (expanded per frame as `guided_velocity` does)
  sde_steps: jax.Array  # [T] bool: which steps were stochastic (requested and with std > 0)
  logprob_mask: jax.Array | None  # frame mask x logprob_mask ([B, F] or latent-shaped) the log-probs average over


# --- Densities ------------------------------------------------------------------------------------------------

def gaussian_log_prob(sample, mean, std, mask=None) -> jax.Array:
  """[B] mean over the masked non-batch elements of log N(sample; mean, std^2), fp32; 0 for a row with no element.

  std: broadcastable to the sample (a scalar, [B, 1, ...] per row or elementwise), > 0. mask: None (every element)
  or a leading prefix of the sample's shape ([B], [B, F] per latent frame, ..., the full shape), nonzero = counted.
  """
  sample, mean = f32(sample), f32(mean)
  require_float_like("mean", mean, "sample", sample)
  std = _per_element(std, sample.shape, "std")
  _check_optional_mask(mask, sample.shape)
  return _gaussian_log_prob(sample, mean, std, mask)


def _gaussian_log_prob(sample, mean, std, mask) -> jax.Array:
  """`gaussian_log_prob` of checked fp32 arrays (std broadcastable to the sample)."""
  density = -jnp.square(sample - mean) / (2.0 * jnp.square(std)) - jnp.log(std) - _LOG_SQRT_2PI
  return _masked_mean(density, mask)


def mean_kl(mean, ref_mean, std, mask=None) -> jax.Array:
  """[B] Flow-GRPO's per-step KL between two Gaussians of one std: ||mean - ref_mean||^2 / (2 std^2), averaged over
  the masked elements as `gaussian_log_prob` averages; elements with std = 0 (a deterministic step) count 0."""
  mean, ref_mean = f32(mean), f32(ref_mean)
  require_float_like("ref_mean", ref_mean, "mean", mean)
  std = _per_element(std, mean.shape, "std")
  _check_optional_mask(mask, mean.shape)
  positive = std > 0
  kl = jnp.square(mean - ref_mean) / (2.0 * jnp.square(jnp.where(positive, std, 1.0)))
  return _masked_mean(jnp.where(positive, kl, 0.0), mask)


def ratio_norm_log_ratio(log_prob, old_log_prob, mean, old_mean, std, mask=None) -> jax.Array:
  """[B] GRPO-Guard's normalised log-ratio (RatioNorm, Flow-Factory's form) with c = std:

    log r~ = c (log_prob - old_log_prob) + mse(mean, old_mean) / (2 c)

  For prev_sample = old_mean + c eps this is mean(eps (mean - old_mean)) over the masked elements: centred at 0 on
  policy and free of the step's scale; clip it as a log-ratio. `mask` must be the one the log-probs were averaged
  with. std: one value per row (a scalar, [B] or [B, 1, ...]); rows with std = 0 (deterministic steps) give 0.
  """
  log_prob, old_log_prob = f32(log_prob), f32(old_log_prob)
  mean, old_mean = f32(mean), f32(old_mean)
  require_float_like("old_mean", old_mean, "mean", mean)
  b = mean.shape[0]
  for name, value in (("log_prob", log_prob), ("old_log_prob", old_log_prob)):
    if value.shape != (b,):
      raise ValueError(f"{name} must be [B]=[{b}], got shape {value.shape}")
  c = _per_row(std, mean.shape, "std")  # [B]
  _check_optional_mask(mask, mean.shape)
  positive = c > 0
  c_safe = jnp.where(positive, c, 1.0)
  mse = _masked_mean(jnp.square(mean - old_mean), mask)  # [B]
  return jnp.where(positive, c_safe * (log_prob - old_log_prob) + mse / (2.0 * c_safe), 0.0)


# --- One step -------------------------------------------------------------------------------------------------

def sde_step(x, v, sigma, sigma_prev, *, kind: str = "flow_grpo", noise_level: float = 0.7,
             sigma_max: float | jax.Array | None = None, sigma_min: float = 0.0, eta: float = 0.3, noise=None,
             rng=None, prev_sample=None, deterministic: bool = False, mask=None) -> SDEStep:
  """One SDE step from s = sigma to s_prev = sigma_prev with velocity v, and the log-prob of its sample.

  kinds (std is the Gaussian's std; flow_grpo, wan and dance share Flow-GRPO's mean with noise scale sigma_t):
    mean = x (1 + sigma_t^2 dt / (2 s)) + v (1 + sigma_t^2 (1 - s) / (2 s)) dt,  std = sigma_t sqrt(-dt)
    "flow_grpo": sigma_t = a sqrt(s / (1 - s)), a = noise_level, with sigma_max (the grid's sigmas[1]) in place of
      s in the denominator where s = 1 (flow_grpo's sd3_sde_with_logprob).
    "wan": sigma_t = sigma_min + (sigma_max - sigma_min) s (flow_grpo's Wan port: sigma_max = sigmas[1],
      sigma_min = sigmas[-1] = 0 on a grid ending in 0); noise_level is not used.
    "dance": sigma_t = eta (DanceGRPO's constant noise; its score-corrected mean is the one above).
    "cps": std = s_prev sin(a pi / 2), mean = x0 (1 - s_prev) + x1 sqrt(s_prev^2 - std^2), x0 = x - s v,
      x1 = x + (1 - s) v (flow_grpo's "cps"; flow_grpo scores it by -(x' - mean)^2 alone, here by the Gaussian).
  A step whose std is 0 (a = 0, eta = 0, or cps onto s_prev = 0) is deterministic: prev_sample = mean, log_prob 0;
  with a = 0 (or eta = 0) the mean is exactly the Euler step x + v dt.

  Args:
    x, v: [B, F, H, W, C] latents at s and the (guided) velocity; any float dtype, computed in fp32.
    sigma, sigma_prev: scalars or [B], 0 <= sigma_prev < sigma <= 1.
    kind, noise_level, eta, sigma_max, sigma_min: the noise, see above. sigma_max is needed by "wan" and by
      "flow_grpo" unless sigma is concrete and below 1.
    noise: [B, F, H, W, C] standard normal noise, prev_sample = mean + std * noise; or rng: a PRNG key to draw it.
    prev_sample: a stored sample to score instead (the trainer's recomputation under new params); no noise / rng.
    deterministic: the ODE step: prev_sample = mean = x + v dt exactly (euler_step), std 0, log_prob 0.
    mask: which elements the log-prob averages over (see `gaussian_log_prob`): e.g. [B, F] with 0 on TI2V-fixed
      frames, or 1 only on the frames of a TempAct transition chunk.
  """
  x, v = _check_step_latents(x, v)
  _check_noise(kind, noise_level, eta, sigma_max, sigma_min)
  s, s_prev = _check_sigmas(sigma, sigma_prev, x.shape[0], kind, sigma_max)
  sources = [name for name, value in (("noise", noise), ("rng", rng), ("prev_sample", prev_sample))
             if value is not None]
  if deterministic and sources:
    raise ValueError(f"a deterministic step takes no {' / '.join(sources)}")
  if not deterministic and len(sources) != 1:
    raise ValueError(f"pass exactly one of noise, rng or prev_sample to a stochastic step, got {sources or 'none'}")
  if noise is not None:
    require_float_like("noise", noise, "x", x)
  if prev_sample is not None:
    require_float_like("prev_sample", prev_sample, "x", x)
  _check_optional_mask(mask, x.shape)
  return _sde_step(x, v, s, s_prev, kind, noise_level, eta, sigma_max, sigma_min, noise, rng, prev_sample,
                   deterministic, mask)


def _sde_step(x, v, s, s_prev, kind, noise_level, eta, sigma_max, sigma_min, noise, rng, prev_sample, deterministic,
              mask) -> SDEStep:
  """`sde_step` of checked arguments: x, v fp32 latents, s and s_prev fp32 [B, 1, 1, 1, 1]."""
  dt = s_prev - s  # [B, 1, 1, 1, 1], < 0
  if deterministic:
    euler = x + dt * v
    zeros = jnp.zeros((x.shape[0],), jnp.float32)
    return SDEStep(euler, zeros, euler, jnp.zeros_like(s))
  mean, std = _mean_and_std(x, v, s, s_prev, kind, noise_level, eta, sigma_max, sigma_min)
  positive = std > 0  # [B, 1, 1, 1, 1]
  if prev_sample is None:
    eps = f32(noise) if noise is not None else jax.random.normal(rng, x.shape, jnp.float32)
    prev_sample = mean + std * eps  # = mean where std = 0
  prev_sample = f32(prev_sample)
  log_prob = _gaussian_log_prob(jax.lax.stop_gradient(prev_sample), mean, jnp.where(positive, std, 1.0), mask)
  return SDEStep(prev_sample, jnp.where(positive[:, 0, 0, 0, 0], log_prob, 0.0), mean, std)


def _mean_and_std(x, v, s, s_prev, kind, noise_level, eta, sigma_max, sigma_min):
  dt = s_prev - s
  if kind == "cps":
    std = s_prev * math.sin(noise_level * math.pi / 2)
    x0, x1 = x - s * v, x + (1.0 - s) * v
    return x0 * (1.0 - s_prev) + x1 * jnp.sqrt(jnp.maximum(jnp.square(s_prev) - jnp.square(std), 0.0)), std
  if kind == "flow_grpo":
    denominator = 1.0 - (jnp.where(s == 1.0, f32(sigma_max), s) if sigma_max is not None else s)
    sigma_t = noise_level * jnp.sqrt(s / denominator)
  elif kind == "wan":
    sigma_t = sigma_min + (f32(sigma_max) - sigma_min) * s
  else:
    sigma_t = jnp.full_like(s, eta)
  mean = x * (1.0 + jnp.square(sigma_t) * dt / (2.0 * s)) + v * (1.0 + jnp.square(sigma_t) * (1.0 - s) / (2.0 * s)) * dt
  return mean, sigma_t * jnp.sqrt(-dt)


# --- Which steps are stochastic and trained -------------------------------------------------------------------

def sde_window(rng_or_seed, num_steps: int, window_size: int | None = None, *, train_fraction: float = 0.99,
               window_range: tuple[int, int] | None = None) -> np.ndarray:
  """[T] bool host mask of the denoising steps that are sampled stochastically and trained.

  Flow-GRPO trains the first n = int(train_fraction T) steps (0.99 in its configs; never the terminal step onto
  s = 0, whose Gaussian is the sharpest: n is capped at T - 1). window_size None: those n steps. Flow-GRPO-Fast:
  a random window of window_size consecutive steps starting uniformly in [lo, hi - window_size], window_range =
  (lo, hi) (hi exclusive, at most T - 1; default (0, n)); the other steps are deterministic ODE steps.

  rng_or_seed: an int seed, a numpy Generator or a concrete JAX PRNG key (pulled to the host); unused when
  window_size is None. Pass the mask to `sample_sde(sde_steps=...)` as an array argument of the jitted rollout so
  every window shares one compilation.
  """
  require_int("num_steps", num_steps, 2)
  if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float, np.floating)) \
      or not 0 < train_fraction <= 1:
    raise ValueError(f"train_fraction must be a number in (0, 1], got {train_fraction!r}")
  trainable = min(int(train_fraction * num_steps), num_steps - 1)
  if trainable < 1:
    raise ValueError(f"train_fraction={train_fraction} of num_steps={num_steps} leaves no step to train")
  steps = np.zeros((num_steps,), bool)
  if window_size is None:
    if window_range is not None:
      raise ValueError("window_range needs a window_size")
    steps[:trainable] = True
    return steps
  lo, hi = (0, trainable) if window_range is None else _check_window_range(window_range, num_steps)
  require_int("window_size", window_size, 1)
  if window_size > hi - lo:
    raise ValueError(f"window_size={window_size} does not fit in window_range [{lo}, {hi})")
  start = lo + _random_index(rng_or_seed, hi - lo - window_size + 1)
  steps[start:start + window_size] = True
  return steps


def _random_index(rng_or_seed, n: int) -> int:
  """A uniform integer in [0, n) from a seed, a numpy Generator or a JAX key."""
  if isinstance(rng_or_seed, np.random.Generator):
    return int(rng_or_seed.integers(n))
  if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
    return int(np.random.default_rng(int(rng_or_seed)).integers(n))
  if isinstance(rng_or_seed, jax.Array) and not isinstance(rng_or_seed, jax.core.Tracer):
    return int(jax.random.randint(rng_or_seed, (), 0, n))
  raise ValueError(f"rng_or_seed must be an int seed, a numpy Generator or a concrete JAX key, got {rng_or_seed!r}")


# --- The rollout ----------------------------------------------------------------------------------------------

def sample_sde(velocity_fn: VelocityFn, noise, rng, *, cond: Any = None, uncond: Any = None,
               guidance_scale: float = 5.0, num_steps: int = 10, shift: float = 5.0, kind: str = "flow_grpo",
               noise_level: float = 0.7, eta: float = 0.3, sde_steps=None, fixed_latents=None, frame_mask=None,
               logprob_mask=None, keep_means: bool = True) -> SDETrajectory:
  """Flow-GRPO rollout: `sample_flow(solver="euler")`'s loop with `sde_step` on the steps in `sde_steps`.

  Step i: v = `guided_velocity` at the model timestep of sigmas[i] (the Euler grid `euler_sigmas(num_steps,
  shift)`); on a stochastic step x' = sde_step(x, v, sigmas[i], sigmas[i + 1], noise=normal(keys[i])) with
  keys = jax.random.split(rng, T) and sigma_max = sigmas[1], else the Euler step x + v dt; then the fixed frames
  are put back. One `lax.scan`: velocity_fn is traced once (twice with guidance). With noise_level = 0 (eta = 0
  for "dance"; for "wan", an all-False sde_steps) every step is the Euler step and the result is
  `sample_flow(solver="euler")`'s.

  Args:
    velocity_fn, noise, cond, uncond, guidance_scale, num_steps, shift, fixed_latents, frame_mask: as in
      `sample_flow` (frame_mask defaults to fixing frame 0 when fixed_latents is given).
    rng: PRNG key of the step noise.
    kind, noise_level, eta: the SDE (see `sde_step`).
    sde_steps: [T] bool (numpy or a traced array): which steps are stochastic; default all but the last
      (the terminal step onto s = 0 stays an ODE step). See `sde_window`.
    logprob_mask: [B, F] or latent-shaped, nonzero where log-probs count (e.g. the transition chunk); it is
      multiplied by the frame mask, so fixed frames never count.
    keep_means: store the step means (the trainer's old means for RatioNorm); False stores None.

  Returns:
    SDETrajectory. latents[i + 1] is scored again with sde_step(latents[i], v, sigmas[i], sigmas[i + 1],
    prev_sample=latents[i + 1], mask=trajectory.logprob_mask, sigma_max=sigmas[1], ...) (the on-policy ratio is 1).
  """
  check_sampler_args(velocity_fn, noise, num_steps, shift, "euler", None, guidance_scale, fixed_latents, frame_mask,
                      None, False)
  if not isinstance(keep_means, bool):
    raise ValueError(f"keep_means must be a bool, got {keep_means!r}")
  sigmas_np, timesteps_np = euler_sigmas(num_steps, shift)
  sigma_max = float(sigmas_np[1])
  _check_noise(kind, noise_level, eta, sigma_max, 0.0)
  b, f = noise.shape[:2]
  sde_steps = _check_sde_steps(sde_steps, num_steps)
  conditioned = fixed_latents is not None
  x = f32(noise)
  z0 = mask = None
  if conditioned:
    z0 = f32(fixed_latents)
    mask = first_frame_mask(b, f, 1) if frame_mask is None else jnp.broadcast_to(f32(frame_mask), (b, f))
    x = apply_fixed_frames(x, z0, mask)
  lp_mask = _rollout_logprob_mask(logprob_mask, mask, noise.shape)
  noisy = (noise_level if kind in ("flow_grpo", "cps") else eta if kind == "dance" else 1.0) > 0
  sigmas, timesteps = jnp.asarray(sigmas_np), jnp.asarray(timesteps_np)
  step_args = (kind, noise_level, eta, sigma_max, 0.0)

  def body(x, step_inputs):
    key, s, s_prev, t, requested = step_inputs
    v = guided_velocity(velocity_fn, x, t, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                        frame_mask=mask)
    euler = x + (s_prev - s) * v
    if noisy:
      s_b, s_prev_b = (jnp.broadcast_to(f32(value), (b,)).reshape(b, 1, 1, 1, 1) for value in (s, s_prev))
      step = _sde_step(x, v, s_b, s_prev_b, *step_args, jax.random.normal(key, x.shape, jnp.float32), None, None,
                       False, lp_mask)
      stochastic = requested & (step.std[0, 0, 0, 0, 0] > 0)
      x_next = jnp.where(stochastic, step.prev_sample, euler)
      mean = jnp.where(stochastic, step.mean, euler)
      log_prob = jnp.where(stochastic, step.log_prob, 0.0)
    else:
      stochastic, x_next, mean, log_prob = jnp.zeros((), bool), euler, euler, jnp.zeros((b,), jnp.float32)
    if conditioned:
      x_next = apply_fixed_frames(x_next, z0, mask)
    return x_next, (x_next, log_prob, mean if keep_means else None, stochastic)

  keys = jax.random.split(rng, num_steps)
  step_inputs = (keys, sigmas[:-1], sigmas[1:], timesteps, sde_steps)
  _, (latents, log_probs, means, stochastic) = jax.lax.scan(body, x, step_inputs)
  latents = jnp.concatenate([x[None], latents], axis=0)  # [T + 1, B, F, H, W, C]
  return SDETrajectory(latents, log_probs, means, sigmas, timesteps, stochastic, lp_mask)


def _rollout_logprob_mask(logprob_mask, frame_mask, shape):
  """frame mask x logprob_mask, [B, F] or latent-shaped fp32; None when neither is given."""
  if logprob_mask is None:
    return frame_mask
  if not hasattr(logprob_mask, "shape") or tuple(logprob_mask.shape) not in (tuple(shape[:2]), tuple(shape)):
    raise ValueError(f"logprob_mask must be [B, F]={list(shape[:2])} or the latents' shape {list(shape)}, got "
                     f"{describe(logprob_mask)}")
  counted = (jnp.asarray(logprob_mask) != 0).astype(jnp.float32)
  if frame_mask is None:
    return counted
  return counted * frame_mask.reshape(frame_mask.shape + (1,) * (counted.ndim - 2))


# --- Helpers and checks ---------------------------------------------------------------------------------------

def _masked_mean(values, mask) -> jax.Array:
  """[B] mean of values [B, ...] over the non-batch elements where mask (a leading prefix of the shape) != 0."""
  shape = values.shape
  if mask is None:
    return jnp.mean(values.reshape(shape[0], -1), axis=1)
  counted = jnp.asarray(mask) != 0
  per_entry = math.prod(shape[counted.ndim:])  # elements each mask entry stands for
  counted_b = counted.reshape(counted.shape + (1,) * (len(shape) - counted.ndim))
  total = jnp.sum(jnp.where(counted_b, values, 0.0).reshape(shape[0], -1), axis=1)
  count = jnp.sum(counted.reshape(shape[0], -1), axis=1).astype(jnp.float32) * per_entry
  return total / jnp.maximum(count, 1.0)


def _per_element(std, shape, name) -> jax.Array:
  std = f32(std)
  try:
    fits = std.ndim <= len(shape) and jnp.broadcast_shapes(std.shape, shape) == tuple(shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"{name} must broadcast to {tuple(shape)}, got shape {std.shape}")
  return std


def _per_row(std, shape, name) -> jax.Array:
  """A scalar, [B] or [B, 1, ...] -> [B] fp32."""
  std = f32(std)
  b = shape[0]
  if std.ndim == 0:
    return jnp.full((b,), std)
  if std.shape[0] != b or math.prod(std.shape[1:]) != 1 or std.ndim > len(shape):
    raise ValueError(f"{name} must hold one value per row (a scalar, [B] or [B, 1, ...] with B={b}), got shape "
                     f"{std.shape}")
  return std.reshape(b)


def _check_step_latents(x, v):
  require_latents("x", x)
  require_float_like("v", v, "x", x)
  return f32(x), f32(v)


def _check_sigmas(sigma, sigma_prev, b, kind, sigma_max):
  """sigma, sigma_prev -> fp32 [B, 1, 1, 1, 1] each; concrete values are range-checked."""
  out = []
  for name, value in (("sigma", sigma), ("sigma_prev", sigma_prev)):
    shape = tuple(np.shape(value))
    if shape not in ((), (b,)) or not (isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
                                       or jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating)):
      raise ValueError(f"{name} must be a float scalar or [B]=[{b}], got {describe(value)}")
    out.append(jnp.broadcast_to(f32(value), (b,)).reshape(b, 1, 1, 1, 1))
  concrete = not any(isinstance(value, jax.core.Tracer) for value in (sigma, sigma_prev))
  if concrete:
    s, s_prev = (np.broadcast_to(np.asarray(value, np.float32), (b,)) for value in (sigma, sigma_prev))
    if not (np.all(s <= 1) and np.all(s_prev >= 0) and np.all(s_prev < s)):
      raise ValueError(f"noise levels must satisfy 0 <= sigma_prev < sigma <= 1, got sigma={s.tolist()}, "
                       f"sigma_prev={s_prev.tolist()}")
  if kind == "flow_grpo" and sigma_max is None and (not concrete or np.any(np.asarray(sigma) == 1)):
    raise ValueError("kind 'flow_grpo' needs sigma_max (the grid's sigmas[1]) where sigma may be 1; pass it")
  return out


def _check_noise(kind, noise_level, eta, sigma_max, sigma_min):
  if kind not in SDE_KINDS:
    raise ValueError(f"kind must be one of {SDE_KINDS}, got {kind!r}")
  for name, value in (("noise_level", noise_level), ("eta", eta), ("sigma_min", sigma_min)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
        or value < 0:
      raise ValueError(f"{name} must be a finite Python number >= 0, got {value!r}")
  if kind == "cps" and noise_level > 1:
    raise ValueError(f"kind 'cps' needs noise_level in [0, 1] (std = s_prev sin(a pi / 2) <= s_prev), "
                     f"got {noise_level!r}")
  if sigma_max is None:
    if kind == "wan":
      raise ValueError("kind 'wan' needs sigma_max (the grid's sigmas[1]): sigma_t = sigma_min + (sigma_max - "
                       "sigma_min) s")
    return
  if isinstance(sigma_max, bool) or np.shape(sigma_max) != () or not (
      isinstance(sigma_max, (int, float, np.floating)) or jnp.issubdtype(jnp.asarray(sigma_max).dtype, jnp.floating)):
    raise ValueError(f"sigma_max must be a float scalar (the grid's sigmas[1]), got {sigma_max!r}")
  if isinstance(sigma_max, jax.core.Tracer):
    return
  value = float(sigma_max)
  if not 0 <= value <= 1 or (kind == "flow_grpo" and value == 1):
    raise ValueError(f"sigma_max (the grid's sigmas[1]) must be in [0, 1], and below 1 for 'flow_grpo' where it "
                     f"replaces s = 1 in sqrt(s / (1 - s)), got {value!r}")
  if kind == "wan" and sigma_min > value:
    raise ValueError(f"kind 'wan' needs sigma_min <= sigma_max, got {sigma_min!r} > {value!r}")


def _check_optional_mask(mask, shape):
  if mask is None:
    return
  prefixes = [tuple(shape[:k]) for k in range(1, len(shape) + 1)]
  if not hasattr(mask, "shape") or tuple(mask.shape) not in prefixes:
    raise ValueError(f"mask must have a leading prefix of the latents' shape ({', '.join(map(str, prefixes))}), "
                     f"got {describe(mask)}")


def _check_sde_steps(sde_steps, num_steps) -> jax.Array:
  if sde_steps is None:
    return jnp.arange(num_steps) < num_steps - 1
  if not hasattr(sde_steps, "shape") or tuple(sde_steps.shape) != (num_steps,) or sde_steps.dtype != bool:
    raise ValueError(f"sde_steps must be a bool [num_steps]=[{num_steps}] array, got {describe(sde_steps)}")
  return jnp.asarray(sde_steps)


def _check_window_range(window_range, num_steps):
  if not isinstance(window_range, (tuple, list)) or len(window_range) != 2 or not all(
      isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in window_range) \
      or not 0 <= window_range[0] < window_range[1] <= num_steps - 1:
    raise ValueError(f"window_range must be (lo, hi) ints with 0 <= lo < hi <= num_steps - 1 = {num_steps - 1} "
                     f"(the terminal step is never trained), got {window_range!r}")
  return int(window_range[0]), int(window_range[1])
