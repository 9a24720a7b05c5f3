"""The video DiT's denoising loop: classifier-free guidance, first-frame (TI2V) conditioning and an Euler or UniPC
solver, all in one `lax.fori_loop`; traceable, so it is jitted together with the model by the caller.

Not the schedules or solver steps (flow_schedulers.py), not the model, not SDE / log-prob sampling for RL.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import describe, f32, require_latents
from planx_jax.conditioning import apply_fixed_frames, first_frame_mask
from planx_jax.sampling.flow_schedulers import (
    UNIPC_ORDER,
    check_grid_args,
    euler_sigmas,
    euler_step,
    unipc_coefficients,
    unipc_init,
    unipc_sigmas,
    unipc_step,
)

SOLVERS = ("unipc", "euler")
# velocity_fn(latents [B, F, H, W, C] fp32, timesteps [B] or [B, F] fp32, cond) -> v [B, F, H, W, C]
VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
ProgressFn = Callable[[int, int], None]


def sample_flow(velocity_fn: VelocityFn, noise, *, cond: Any = None, uncond: Any = None, num_steps: int = 50,
                shift: float = 5.0, solver: str = "unipc", order: int | None = None, guidance_scale: float = 5.0,
                fixed_latents=None, frame_mask=None, callback: ProgressFn | None = None,
                ordered_callback: bool = False) -> jax.Array:
  """Denoises `noise` from s = 1 to s = 0 with the DiT's velocity (Wan2.2 TI2V-5B defaults: UniPC, 50 steps,
  shift 5, guidance 5).

  Every step: v = velocity_fn(x, t, cond); with guidance v = v_u + w (v - v_u), v_u = velocity_fn(x, t, uncond);
  then one solver step, then the fixed frames are put back: x = (1 - m) z0 + m x. The loop is a single
  `lax.fori_loop`, so `velocity_fn` is traced once (twice with guidance) whatever `num_steps` is. The function is
  traceable: jit it with the model, e.g.

    @jax.jit
    def generate(params, noise, text, null_text):
      velocity_fn = lambda x, t, c: dit.apply({"params": params}, x, t, c)
      return sample_flow(velocity_fn, noise, cond=text, uncond=null_text)

  Args:
    velocity_fn: (latents [B, F, H, W, C] fp32, timesteps, cond) -> velocity v = noise - x0, same shape.
      timesteps are fp32 model timesteps (1000 s as diffusers feeds them: integers for UniPC, fp32 1000 s for
      Euler): [B] when no frames are fixed; [B, F] per latent frame when `fixed_latents` is given, 0 on fixed
      frames (Wan TI2V; expand to the DiT's per-token [B, L] frame-major, F x tokens per frame).
    noise: [B, F, H, W, C] initial Gaussian latents (channels-last); any float dtype, the loop runs in fp32.
    cond: pytree handed to velocity_fn for the conditional prediction (text embeddings, semantic tokens, ...).
    uncond: pytree for the unconditional prediction; cond and uncond may differ in structure or length (two
      model calls, not one batched call). None turns guidance off.
    num_steps: solver steps N >= 1 (model calls: N, or 2N with guidance).
    shift: timestep shift s' = shift s / (1 + (shift - 1) s), > 0.
    solver: "unipc" (diffusers UniPCMultistepScheduler: flow sigmas, bh2, x0-predicting, lower-order final, final
      sigma 0) or "euler" (diffusers FlowMatchEulerDiscreteScheduler).
    order: solver order; None picks the default. UniPC implements order 2 only, Euler is order 1; others raise.
    guidance_scale: w, a static Python number. Guidance is off (one model call per step) when w == 1 or uncond
      is None; any other w is applied as written (diffusers' pipelines also skip guidance for w < 1).
    fixed_latents: [B, F, H, W, C] clean latents z0 whose fixed frames condition the video (TI2V: the encoded
      first frame in frame 0; other frames' values are ignored). None: nothing is fixed.
    frame_mask: [B, F] or [F], 1 on generated frames and 0 on fixed ones (`conditioning.first_frame_mask`);
      defaults to fixing frame 0. Only with fixed_latents. Rows of all ones (T2V) may share a batch with TI2V rows.
    callback: called on the host as callback(i, N) after step i (0-based) completes, through
      `jax.debug.callback`, e.g. `lambda i, n: bar.update(1)` for tqdm. Calls come from the running program, so
      a progress bar follows the device, not the dispatch.
    ordered_callback: False (default) stages an unordered callback: it works under any sharding, and since the
      loop is sequential the calls arrive in step order on one device (with several local devices JAX still
      makes one call per step). True passes ordered=True: JAX threads a token so these calls keep step order
      with respect to every other ordered effect in the program, but JAX rejects ordered effects in a
      computation spanning more than one device (ValueError at compile time).

  Returns:
    [B, F, H, W, C] fp32 denoised latents x_0; fixed frames are exactly fixed_latents there.
  """
  check_sampler_args(velocity_fn, noise, num_steps, shift, solver, order, guidance_scale, fixed_latents, frame_mask,
              callback, ordered_callback)
  b, f = noise.shape[:2]
  if solver == "unipc":
    sigmas, timesteps = unipc_sigmas(num_steps, shift)
    coeffs = unipc_coefficients(sigmas)
  else:
    sigmas, timesteps = euler_sigmas(num_steps, shift)
  model_timesteps = jnp.asarray(timesteps.astype(np.float32))  # [N]
  sigmas = jnp.asarray(sigmas)  # [N + 1]

  conditioned = fixed_latents is not None
  x = f32(noise)
  z0 = mask = None
  if conditioned:
    z0 = f32(fixed_latents)
    mask = first_frame_mask(b, f, 1) if frame_mask is None else jnp.asarray(frame_mask, jnp.float32)
    mask = jnp.broadcast_to(mask, (b, f))  # [B, F]
    x = apply_fixed_frames(x, z0, mask)

  def body(i, carry):
    x, state = carry
    v = guided_velocity(velocity_fn, x, model_timesteps[i], cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                        frame_mask=mask)
    if solver == "unipc":
      x, state = unipc_step(state, v, x, coeffs)
    else:
      x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    if conditioned:
      x = apply_fixed_frames(x, z0, mask)
    if callback is not None:
      jax.debug.callback(ordered=ordered_callback)(lambda step: callback(int(step), num_steps), i)
    return x, state

  state = unipc_init(x) if solver == "unipc" else ()
  x, _ = jax.lax.fori_loop(0, num_steps, body, (x, state))
  return x


def guided_velocity(velocity_fn: VelocityFn, x, timestep, *, cond: Any = None, uncond: Any = None,
                    guidance_scale: float = 5.0, frame_mask=None) -> jax.Array:
  """The velocity `sample_flow` (and `flow_sde.sample_sde`) steps with: timesteps [B] (or frame_mask * t, [B, F],
  when frames are fixed) and v = v_u + w (v_c - v_u) with two model calls, guidance off when uncond is None or
  w == 1. fp32 [B, F, H, W, C].

  timestep: the model timestep 1000 s, a scalar or [B]; frame_mask: [B, F] (0 on fixed frames) or None.
  """
  x = f32(x)
  b = x.shape[0]
  t = jnp.broadcast_to(f32(timestep), (b,))  # [B]
  timesteps = t if frame_mask is None else f32(frame_mask) * t[:, None]  # [B] | [B, F]
  v = call_velocity(velocity_fn, x, timesteps, cond, "cond")
  if uncond is not None and guidance_scale != 1:
    v_uncond = call_velocity(velocity_fn, x, timesteps, uncond, "uncond")
    v = v_uncond + guidance_scale * (v - v_uncond)
  return v


def call_velocity(velocity_fn, x, timesteps, cond, name) -> jax.Array:
  """velocity_fn(x, timesteps, cond) as fp32, after checking it returns float velocities shaped like x (shared
  with the SDE sampler)."""
  v = velocity_fn(x, timesteps, cond)
  if not hasattr(v, "shape") or tuple(v.shape) != tuple(x.shape) or not jnp.issubdtype(v.dtype, jnp.floating):
    raise ValueError(f"velocity_fn(latents, timesteps, {name}) must return float velocities shaped like the latents "
                     f"{tuple(x.shape)}, got {describe(v)}")
  return v.astype(jnp.float32)


def check_sampler_args(velocity_fn, noise, num_steps, shift, solver, order, guidance_scale, fixed_latents, frame_mask,
                callback, ordered_callback):
  if not callable(velocity_fn):
    raise ValueError(f"velocity_fn must be callable (latents, timesteps, cond) -> v, got {velocity_fn!r}")
  require_latents("noise", noise)
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  default_order = UNIPC_ORDER if solver == "unipc" else 1
  if order is not None and (isinstance(order, bool) or order != default_order):
    raise ValueError(f"solver {solver!r} implements order {default_order} only, got order={order!r}")
  check_grid_args(num_steps, shift)
  if not isinstance(guidance_scale, (int, float, np.floating)) or isinstance(guidance_scale, bool) \
      or not math.isfinite(guidance_scale):
    raise ValueError(f"guidance_scale must be a finite Python number (1 = no guidance), got {guidance_scale!r}")
  if callback is not None and not callable(callback):
    raise ValueError(f"callback must be callable (step, num_steps) or None, got {callback!r}")
  if not isinstance(ordered_callback, bool):
    raise ValueError(f"ordered_callback must be a bool, got {ordered_callback!r}")
  if fixed_latents is None:
    if frame_mask is not None:
      raise ValueError("frame_mask needs fixed_latents: it marks which frames are held at fixed_latents")
    return
  if not hasattr(fixed_latents, "shape") or tuple(fixed_latents.shape) != tuple(noise.shape) \
      or not jnp.issubdtype(fixed_latents.dtype, jnp.floating):
    raise ValueError(f"fixed_latents must be float latents shaped like noise {tuple(noise.shape)}, "
                     f"got {describe(fixed_latents)}")
  b, f = noise.shape[:2]
  if frame_mask is None:
    if f < 2:
      raise ValueError(f"fixing the first frame (the default frame_mask) needs >= 2 latent frames, got F={f}")
    return
  if not hasattr(frame_mask, "shape") or tuple(frame_mask.shape) not in ((b, f), (f,)):
    raise ValueError(f"frame_mask must be [B, F]=[{b}, {f}] or [F]=[{f}], got {describe(frame_mask)}")
  if not isinstance(frame_mask, jax.core.Tracer):
    values = np.asarray(frame_mask, np.float32)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError(f"frame_mask must hold 0 (fixed frame) or 1 (generated frame), got {values.tolist()}")
