"""Rectified-flow training for the video DiT (Plan-X Eq. 4) as pure functions: noising, targets, masked loss,
timestep samplers, first-frame (TI2V) conditioning, the text-drop schedule and CFG condition dropout.

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
  _check_latents("x0", x0)
  _check_same_shape("noise", noise, "x0", x0)
  s = _broadcast_sigma(sigma, x0.shape)  # [B, 1|F, 1, 1, 1]
  x0, noise = _f32(x0), _f32(noise)
  return (1.0 - s) * x0 + s * noise


def velocity_target(x0, noise) -> jax.Array:
  """The flow-matching target v = eps - x0 (d x_s / d s), [B, F, H, W, C] fp32."""
  _check_latents("x0", x0)
  _check_same_shape("noise", noise, "x0", x0)
  return _f32(noise) - _f32(x0)


def x0_from_velocity(x_s, velocity, sigma) -> jax.Array:
  """The clean latents implied by a velocity: x0 = x_s - s v. `sigma` is [B] or [B, F] as in `interpolate`."""
  _check_latents("x_s", x_s)
  _check_same_shape("velocity", velocity, "x_s", x_s)
  s = _broadcast_sigma(sigma, x_s.shape)  # [B, 1|F, 1, 1, 1]
  return _f32(x_s) - s * _f32(velocity)


def sigma_to_timestep(sigma) -> jax.Array:
  """The DiT's timestep input, NUM_TRAIN_TIMESTEPS * s (fp32, same shape as `sigma`)."""
  return _f32(sigma) * float(NUM_TRAIN_TIMESTEPS)


def flow_matching_loss(pred_velocity, x0, noise, mask=None) -> FlowLoss:
  """Mean of (v_theta - (eps - x0))^2 over the counted elements (Plan-X Eq. 4).

  Args:
    pred_velocity: [B, F, H, W, C] the DiT's output, any float dtype (upcast to fp32).
    x0: [B, F, H, W, C] clean latents.
    noise: [B, F, H, W, C] the noise x_s was built from.
    mask: None (count everything) or an array whose shape is a leading prefix of the latents' shape, nonzero
      where counted: [B] per example, [B, F] per latent frame (I2V / TI2V: 0 on the fixed first frames, e.g.
      `first_frame_mask`), [B, F, H, W] per position or [B, F, H, W, C] per element. Any dtype; only
      nonzero-ness matters.
  """
  _check_latents("pred_velocity", pred_velocity)
  _check_same_shape("x0", x0, "pred_velocity", pred_velocity)
  _check_same_shape("noise", noise, "pred_velocity", pred_velocity)
  shape = tuple(pred_velocity.shape)
  _check_count(math.prod(shape))
  error = jnp.square(_f32(pred_velocity) - velocity_target(x0, noise))  # [B, F, H, W, C]
  if mask is None:
    error_sum = jnp.sum(error, dtype=jnp.float32)
    count = jnp.asarray(math.prod(shape), jnp.int32)
  else:
    if not hasattr(mask, "shape") or tuple(mask.shape) not in [shape[:k] for k in range(1, len(shape) + 1)]:
      prefixes = ", ".join(str(list(shape[:k])) for k in range(1, len(shape) + 1))
      raise ValueError(f"mask must have a leading prefix of the latents' shape ({prefixes}), got {_describe(mask)}")
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
  _check_positive("shift", shift)
  s = _f32(sigma)
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


# --- First-frame conditioning (TI2V, video continuation) ----------------------------------------------------

def first_frame_mask(batch: int, num_latent_frames: int, num_fixed=1) -> jax.Array:
  """[B, F] fp32: 0 on the fixed (conditioning) latent frames, 1 on the frames to generate.

  Args:
    batch: B.
    num_latent_frames: F.
    num_fixed: the number of leading frames that are given: 1 for image-to-video, k for video continuation,
      0 for text-to-video. An int, or an integer [B] array for a batch mixing tasks; each in [0, F).
  """
  _check_int("batch", batch, 1)
  _check_int("num_latent_frames", num_latent_frames, 1)
  if isinstance(num_fixed, (int, np.integer)) and not isinstance(num_fixed, bool):
    if not 0 <= num_fixed < num_latent_frames:
      raise ValueError(f"num_fixed must be in [0, num_latent_frames={num_latent_frames}), got {num_fixed}")
    num_fixed = jnp.full((batch,), num_fixed, jnp.int32)
  elif hasattr(num_fixed, "shape") and jnp.issubdtype(num_fixed.dtype, jnp.integer):
    if tuple(num_fixed.shape) != (batch,):
      raise ValueError(f"num_fixed must be an int or an integer [B]={batch} array, got {_describe(num_fixed)}")
    if not isinstance(num_fixed, jax.core.Tracer):
      values = np.asarray(num_fixed)
      if values.min() < 0 or values.max() >= num_latent_frames:
        raise ValueError(f"num_fixed values must be in [0, num_latent_frames={num_latent_frames}), got "
                         f"{values.tolist()}")
  else:
    raise ValueError(f"num_fixed must be an int or an integer [B]={batch} array, got {num_fixed!r}")
  frames = jnp.arange(num_latent_frames, dtype=jnp.int32)
  return (frames[None, :] >= jnp.asarray(num_fixed)[:, None]).astype(jnp.float32)  # [B, F]


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
  _check_int("tokens_per_frame", tokens_per_frame, 1)
  frame_sigmas = per_frame_sigmas(sigma, frame_mask)  # [B, F]
  return jnp.repeat(frame_sigmas, tokens_per_frame, axis=1,
                    total_repeat_length=frame_sigmas.shape[1] * tokens_per_frame)  # [B, F * T]


def apply_fixed_frames(latents, fixed_latents, frame_mask) -> jax.Array:
  """(1 - m) z0 + m x: put the conditioning latents z0 back on the fixed frames (m = 0), fp32.

  Wan TI2V applies this to the initial noise and after every sampler step.

  Args:
    latents: [B, F, H, W, C] the current latents x.
    fixed_latents: [B, F, H, W, C] z0; only its fixed frames matter.
    frame_mask: [B, F] 0 on fixed frames, 1 elsewhere (`first_frame_mask`).
  """
  _check_latents("latents", latents)
  _check_same_shape("fixed_latents", fixed_latents, "latents", latents)
  b, f = latents.shape[:2]
  if not hasattr(frame_mask, "shape") or tuple(frame_mask.shape) != (b, f):
    raise ValueError(f"frame_mask must be [B, F]=[{b}, {f}], got {_describe(frame_mask)}")
  m = _f32(frame_mask)[:, :, None, None, None]  # [B, F, 1, 1, 1]
  return (1.0 - m) * _f32(fixed_latents) + m * _f32(latents)


# --- Condition dropout --------------------------------------------------------------------------------------

def text_drop_prob(step, start: float = 1.0, end: float = 0.5, *, ramp_steps: int) -> jax.Array:
  """Stage-1 text-drop probability (DESIGN.md decision 6): `start` at step 0, linear to `end` at `ramp_steps`,
  `end` afterwards. `step` may be traced (int or float); returns an fp32 scalar (or `step`'s shape).

  Computed as (1 - a) start + a end with a = clip(step / ramp_steps, 0, 1), so both ends are exact.
  """
  _check_probability("start", start)
  _check_probability("end", end)
  _check_int("ramp_steps", ramp_steps, 1)
  if not isinstance(step, jax.core.Tracer) and np.any(np.asarray(step) < 0):
    raise ValueError(f"step must be >= 0, got {step}")
  a = jnp.clip(_f32(step) / float(ramp_steps), 0.0, 1.0)
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
    raise ValueError(f"cond must be an array [B, ...], got {_describe(cond)}")
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
    _check_probability("prob", float(prob))
  dropped = jax.random.bernoulli(rng, jnp.asarray(prob, jnp.float32), (cond.shape[0],))  # [B]
  keep_shape = (cond.shape[0],) + (1,) * (cond.ndim - 1)
  cond = jnp.asarray(cond)
  new = jnp.where(dropped.reshape(keep_shape), jnp.asarray(null_cond).astype(cond.dtype), cond)  # [B, ...]
  return new, dropped


# --- Checks -------------------------------------------------------------------------------------------------

def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _describe(x) -> str:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    return f"a {type(x).__name__}"
  return f"shape {tuple(x.shape)} dtype {x.dtype}"


def _check_latents(name, x):
  if getattr(x, "ndim", None) != 5 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be float latents [B, F, H, W, C], got {_describe(x)}")


def _check_same_shape(name, x, ref_name, ref):
  if not hasattr(x, "shape") or not jnp.issubdtype(x.dtype, jnp.floating) or tuple(x.shape) != tuple(ref.shape):
    raise ValueError(f"{name} must be a float array shaped like {ref_name} {tuple(ref.shape)}, got {_describe(x)}")


def _broadcast_sigma(sigma, shape) -> jax.Array:
  """sigma [B] or [B, F] -> fp32 [B, 1|F, 1, 1, 1] for latents of `shape` [B, F, H, W, C]."""
  b, f = shape[:2]
  if not hasattr(sigma, "shape") or tuple(sigma.shape) not in ((b,), (b, f)):
    raise ValueError(f"sigma must be [B]=[{b}] or per latent frame [B, F]=[{b}, {f}], got {_describe(sigma)}")
  s = _f32(sigma)
  return s.reshape(s.shape + (1,) * (len(shape) - s.ndim))


def _check_sigma_and_frame_mask(sigma, frame_mask):
  if getattr(frame_mask, "ndim", None) != 2:
    raise ValueError(f"frame_mask must be [B, F], got {_describe(frame_mask)}")
  b = frame_mask.shape[0]
  if not hasattr(sigma, "shape") or tuple(sigma.shape) != (b,):
    raise ValueError(f"sigma must be [B]=[{b}] (one noise level per example), got {_describe(sigma)}")
  return _f32(sigma), _f32(frame_mask)


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
  _check_real("mean", mean)
  _check_positive("std", std)
  _check_positive("shift", shift)


def _check_real(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(
      value):
    raise ValueError(f"{name} must be a finite Python number, got {value!r}")


def _check_positive(name, value):
  _check_real(name, value)
  if value <= 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_probability(name, value):
  _check_real(name, value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
