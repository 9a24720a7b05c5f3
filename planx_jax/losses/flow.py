"""Rectified-flow training for the video DiT (Plan-X Eq. 4) as pure functions: noising, targets, masked loss,
timestep samplers, per-frame noise levels of TI2V, the text-drop schedule and CFG condition dropout.

Not the model, not the sampling schedulers (UniPC / Euler), not the train step. Latents are channels-last
[B, F, H, W, C] (F latent frames); every result is fp32. Noise level s is in [0, 1]: s = 0 is data, s = 1 is
noise, and the DiT's timestep input is `sigma_to_timestep(s)` = 1000 s.

Arguments that shape the computation (shapes, `kind`, `mean`, `std`, `shift`, `ramp_steps`) are static Python
values checked on the host. Values that may be traced (`step`, `prob`, `num_fixed` as an array) are checked
only when they are concrete.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import (describe, f32, require_float_like, require_int, require_latents, require_positive,
                              require_probability, require_real)

NUM_TRAIN_TIMESTEPS = 1000  # the DiT's timestep input is NUM_TRAIN_TIMESTEPS * s
SIGMA_KINDS = ("uniform", "logit_normal")


class FlowLoss(NamedTuple):
  """Masked mean squared velocity error and the two sums it is made of.

  To combine microbatches or devices, add `error_sum` and `count` across them, then divide. `count` is int32:
  one call may count at most 2**31 - 1 elements.
  """

  loss: jax.Array  # [] fp32: error_sum / max(count, 1); 0 when nothing is counted
  error_sum: jax.Array  # [] fp32: sum of (v_theta - v)^2 over counted elements
  count: jax.Array  # [] int32: number of counted elements (every channel of a counted position counts)


# --- Noising and targets ------------------------------------------------------------------------------------

def interpolate(x0, noise, sigma) -> jax.Array:
  """The noised latents x_s = (1 - s) x0 + s eps.

  Args:
    x0: [B, F, H, W, C] clean latents.
    noise: [B, F, H, W, C] Gaussian noise eps.
    sigma: [B] one noise level per example, or [B, F] one per latent frame (TI2V: 0 on the fixed first
      frames, see `per_frame_sigmas`, so those frames stay exactly x0).

  Returns:
    [B, F, H, W, C] fp32.
  """
  require_latents("x0", x0)
  require_float_like("noise", noise, "x0", x0)
  s = _broadcast_sigma(sigma, x0.shape)  # [B, 1|F, 1, 1, 1]
  x0, noise = f32(x0), f32(noise)
  return (1.0 - s) * x0 + s * noise


def velocity_target(x0, noise) -> jax.Array:
  """The flow-matching target v = eps - x0 (d x_s / d s), [B, F, H, W, C] fp32."""
  require_latents("x0", x0)
  require_float_like("noise", noise, "x0", x0)
  return f32(noise) - f32(x0)


def x0_from_velocity(x_s, velocity, sigma) -> jax.Array:
  """The clean latents implied by a velocity: x0 = x_s - s v. `sigma` is [B] or [B, F] as in `interpolate`."""
  require_latents("x_s", x_s)
  require_float_like("velocity", velocity, "x_s", x_s)
  s = _broadcast_sigma(sigma, x_s.shape)  # [B, 1|F, 1, 1, 1]
  return f32(x_s) - s * f32(velocity)


def sigma_to_timestep(sigma) -> jax.Array:
  """The DiT's timestep input, NUM_TRAIN_TIMESTEPS * s (fp32, same shape as `sigma`)."""
  return f32(sigma) * float(NUM_TRAIN_TIMESTEPS)


def flow_matching_loss(pred_velocity, x0, noise, mask=None) -> FlowLoss:
  """Mean of (v_theta - (eps - x0))^2 over the counted elements (Plan-X Eq. 4).

  Args:
    pred_velocity: [B, F, H, W, C] the DiT's output, any float dtype (upcast to fp32).
    x0: [B, F, H, W, C] clean latents.
    noise: [B, F, H, W, C] the noise x_s was built from.
    mask: None (count everything) or an array whose shape is a leading prefix of the latents' shape, nonzero
      where counted: [B] per example, [B, F] per latent frame (I2V / TI2V: 0 on the fixed first frames, e.g.
      `conditioning.first_frame_mask`), [B, F, H, W] per position or [B, F, H, W, C] per element. Any dtype; only
      nonzero-ness matters.
  """
  require_latents("pred_velocity", pred_velocity)
  require_float_like("x0", x0, "pred_velocity", pred_velocity)
  require_float_like("noise", noise, "pred_velocity", pred_velocity)
  shape = tuple(pred_velocity.shape)
  _check_count(math.prod(shape))
  error = jnp.square(f32(pred_velocity) - velocity_target(x0, noise))  # [B, F, H, W, C]
  if mask is None:
    error_sum = jnp.sum(error, dtype=jnp.float32)
    count = jnp.asarray(math.prod(shape), jnp.int32)
  else:
    if not hasattr(mask, "shape") or tuple(mask.shape) not in [shape[:k] for k in range(1, len(shape) + 1)]:
      prefixes = ", ".join(str(list(shape[:k])) for k in range(1, len(shape) + 1))
      raise ValueError(f"mask must have a leading prefix of the latents' shape ({prefixes}), got {describe(mask)}")
    counted = jnp.asarray(mask) != 0
    per_entry = math.prod(shape[mask.ndim:])  # elements each mask entry stands for
    counted_b = counted.reshape(counted.shape + (1,) * (len(shape) - mask.ndim))  # broadcastable to error
    error_sum = jnp.sum(jnp.where(counted_b, error, 0.0), dtype=jnp.float32)
    count = jnp.sum(counted, dtype=jnp.int32) * per_entry
  loss = error_sum / jnp.maximum(count, 1).astype(jnp.float32)
  return FlowLoss(loss, error_sum, count)


# --- Timestep sampling --------------------------------------------------------------------------------------

def shift_sigmas(sigma, shift: float) -> jax.Array:
  """The resolution shift s' = shift s / (1 + (shift - 1) s): fixes 0 and 1, increasing in s, the identity for
  shift = 1.

  shift > 1 moves mass towards noise (Wan: 5.0 for TI2V-5B sampling; its maintainers advise about 2 for 480p
  training, more at higher resolution).
  """
  require_positive("shift", shift)
  s = f32(sigma)
  return shift * s / (1.0 + (shift - 1.0) * s)


def sample_sigmas(rng, shape, kind: str = "uniform", mean: float = 0.0, std: float = 1.0,
                  shift: float = 1.0) -> jax.Array:
  """Training noise levels s in [0, 1], fp32 of the given shape, then `shift_sigmas(., shift)`.

  kind="uniform": s ~ U[0, 1). kind="logit_normal": s = sigmoid(u), u ~ N(mean, std^2) (SD3's default is
  mean 0, std 1; `mean` and `std` are ignored for "uniform").
  """
  shape = _check_shape(shape)
  _check_sampling(kind, mean, std, shift)
  if kind == "uniform":
    s = jax.random.uniform(rng, shape, jnp.float32)
  else:
    s = jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape, jnp.float32))
  return s if shift == 1.0 else shift_sigmas(s, shift)


@dataclasses.dataclass(frozen=True)
class TimestepSampling:
  """How training noise levels are drawn (see `sample_sigmas`, whose defaults it shares); validated on construction."""

  kind: str = "uniform"
  mean: float = 0.0
  std: float = 1.0
  shift: float = 1.0

  def __post_init__(self):
    _check_sampling(self.kind, self.mean, self.std, self.shift)

  def sample(self, rng, shape) -> jax.Array:
    return sample_sigmas(rng, shape, self.kind, self.mean, self.std, self.shift)


# --- Per-frame noise levels (TI2V, video continuation: `conditioning.first_frame_mask`) ------------------------

def per_frame_sigmas(sigma, frame_mask) -> jax.Array:
  """[B, F] fp32 noise level per latent frame: s on generated frames, 0 on fixed ones (s * frame_mask)."""
  sigma, frame_mask = _check_sigma_and_frame_mask(sigma, frame_mask)
  return sigma[:, None] * frame_mask  # [B, F]


def per_token_sigmas(sigma, frame_mask, tokens_per_frame: int) -> jax.Array:
  """[B, F * tokens_per_frame] fp32 noise level per DiT token, as Wan TI2V feeds its timesteps.

  Tokens are ordered frame-major (f, h, w), so frame f owns tokens [f * T, (f + 1) * T) with
  T = tokens_per_frame = (H / patch_h) * (W / patch_w). Tokens of fixed frames get exactly 0. Multiply by
  NUM_TRAIN_TIMESTEPS (`sigma_to_timestep`) for the DiT's per-token timestep.
  """
  require_int("tokens_per_frame", tokens_per_frame, 1)
  frame_sigmas = per_frame_sigmas(sigma, frame_mask)  # [B, F]
  return jnp.repeat(frame_sigmas, tokens_per_frame, axis=1,
                    total_repeat_length=frame_sigmas.shape[1] * tokens_per_frame)  # [B, F * T]


# --- Condition dropout --------------------------------------------------------------------------------------

def text_drop_prob(step, start: float = 1.0, end: float = 0.5, *, ramp_steps: int) -> jax.Array:
  """Stage-1 text-drop probability (DESIGN.md decision 6): `start` at step 0, linear to `end` at `ramp_steps`,
  `end` afterwards. `step` may be traced (int or float); returns an fp32 scalar (or `step`'s shape).

  Computed as (1 - a) start + a end with a = clip(step / ramp_steps, 0, 1), so both ends are exact.
  """
  require_probability("start", start)
  require_probability("end", end)
  require_int("ramp_steps", ramp_steps, 1)
  if not isinstance(step, jax.core.Tracer) and np.any(np.asarray(step) < 0):
    raise ValueError(f"step must be >= 0, got {step}")
  a = jnp.clip(f32(step) / float(ramp_steps), 0.0, 1.0)
  return (1.0 - a) * start + a * end


def drop_condition(rng, cond, null_cond, prob) -> tuple[jax.Array, jax.Array]:
  """Classifier-free-guidance dropout: replace whole examples of `cond` by `null_cond` with probability `prob`.

  Args:
    rng: a PRNG key.
    cond: [B, ...] the condition (text embeddings [B, L, D], token ids, ...).
    null_cond: the unconditional value, broadcastable to `cond` (e.g. [L, D], [1, L, D] or a scalar); cast to
      `cond`'s dtype.
    prob: the drop probability in [0, 1], a float or a traced scalar (e.g. `text_drop_prob(step, ...)`).

  Returns:
    (new cond [B, ...] in `cond`'s dtype, dropped [B] bool).
  """
  if not hasattr(cond, "shape") or cond.ndim < 1:
    raise ValueError(f"cond must be an array [B, ...], got {describe(cond)}")
  null_shape = tuple(getattr(null_cond, "shape", np.shape(null_cond)))
  try:
    fits = np.broadcast_shapes(null_shape, tuple(cond.shape)) == tuple(cond.shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"null_cond of shape {null_shape} does not broadcast to cond's shape {tuple(cond.shape)}")
  if np.ndim(prob) != 0:
    raise ValueError(f"prob must be a scalar, got shape {np.shape(prob)}")
  if not isinstance(prob, jax.core.Tracer):
    require_probability("prob", float(prob))
  dropped = jax.random.bernoulli(rng, jnp.asarray(prob, jnp.float32), (cond.shape[0],))  # [B]
  keep_shape = (cond.shape[0],) + (1,) * (cond.ndim - 1)
  cond = jnp.asarray(cond)
  new = jnp.where(dropped.reshape(keep_shape), jnp.asarray(null_cond).astype(cond.dtype), cond)  # [B, ...]
  return new, dropped


# --- Checks -------------------------------------------------------------------------------------------------

def _broadcast_sigma(sigma, shape) -> jax.Array:
  """sigma [B] or [B, F] -> fp32 [B, 1|F, 1, 1, 1] for latents of `shape` [B, F, H, W, C]."""
  b, f = shape[:2]
  if not hasattr(sigma, "shape") or tuple(sigma.shape) not in ((b,), (b, f)):
    raise ValueError(f"sigma must be [B]=[{b}] or per latent frame [B, F]=[{b}, {f}], got {describe(sigma)}")
  s = f32(sigma)
  return s.reshape(s.shape + (1,) * (len(shape) - s.ndim))


def _check_sigma_and_frame_mask(sigma, frame_mask):
  if getattr(frame_mask, "ndim", None) != 2:
    raise ValueError(f"frame_mask must be [B, F], got {describe(frame_mask)}")
  b = frame_mask.shape[0]
  if not hasattr(sigma, "shape") or tuple(sigma.shape) != (b,):
    raise ValueError(f"sigma must be [B]=[{b}] (one noise level per example), got {describe(sigma)}")
  return f32(sigma), f32(frame_mask)


def _check_count(n):
  if n >= 2**31:
    raise ValueError(f"{n} latent elements exceed the int32 count of one call; split the batch into microbatches")


def _check_shape(shape):
  if isinstance(shape, (int, np.integer)):
    shape = (shape,)
  if not isinstance(shape, (tuple, list)) or not all(
      isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
    raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}")
  return tuple(int(d) for d in shape)


def _check_sampling(kind, mean, std, shift):
  if kind not in SIGMA_KINDS:
    raise ValueError(f"kind must be one of {SIGMA_KINDS}, got {kind!r}")
  require_real("mean", mean)
  require_positive("std", std)
  require_positive("shift", shift)
