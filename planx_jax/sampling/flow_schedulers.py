"""Flow-matching sampler schedules and single steps (Euler; UniPC order 2, bh2, x0-predicting) as pure functions,
numerically matching diffusers' FlowMatchEulerDiscreteScheduler and UniPCMultistepScheduler (flow sigmas).

Not the denoising loop, CFG or first-frame conditioning (flow_sampler.py); not training noise levels (losses/flow.py).
Convention: x_s = (1 - s) x0 + s noise, the model predicts v = noise - x0, so x0 = x_s - s v.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import f32, require_int
from planx_jax.losses.flow import NUM_TRAIN_TIMESTEPS

UNIPC_ORDER = 2  # Wan's UniPC order, the only one implemented
# diffusers lowers a first UniPC sigma within this distance of 1 by this much, so log(1 - s) stays finite.
_UNIPC_FIRST_SIGMA_EPS = 1e-6


# --- Schedules (host side, NumPy) ----------------------------------------------------------------------------

def euler_sigmas(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
  """The flow-matching Euler grid of `FlowMatchEulerDiscreteScheduler(shift=shift)` (default config otherwise).

  diffusers builds its training grid in fp32 (s = k / 1000, k = 1..1000, shifted) and takes its ends as
  sigma_max / sigma_min; `set_timesteps` then spaces N points linearly between them in float64 and shifts
  them again (so sigma_min is shifted twice), casts to fp32 and appends a terminal 0.

  Returns:
    sigmas: [N + 1] float32, decreasing, the last one 0.
    timesteps: [N] float32 model timesteps, fp32(sigma) * 1000 computed in fp32 (not rounded).
  """
  check_grid_args(num_steps, shift)
  train_ends = np.array([NUM_TRAIN_TIMESTEPS, 1], np.float32) / np.float32(NUM_TRAIN_TIMESTEPS)  # [2] fp32
  sigma_max, sigma_min = (float(s) for s in _shift_fp32(train_ends, shift))
  grid = np.linspace(sigma_max * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, num_steps)
  sigmas = _shift_fp64(grid / NUM_TRAIN_TIMESTEPS, shift).astype(np.float32)  # [N]
  timesteps = sigmas * np.float32(NUM_TRAIN_TIMESTEPS)
  return np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps


def unipc_sigmas(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
  """The grid of `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero")`.

  s = linspace(1, 1/1000, N + 1)[:-1] shifted in float64; a first sigma within 1e-6 of 1 is lowered by 1e-6;
  timesteps are 1000 s truncated to integers; sigmas are cast to fp32 with a terminal 0 appended.

  Returns:
    sigmas: [N + 1] float32, decreasing, the last one 0.
    timesteps: [N] int64 model timesteps (diffusers feeds these integers to the DiT).
  """
  check_grid_args(num_steps, shift)
  sigmas = _shift_fp64(np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1)[:-1], shift)  # [N] float64
  if abs(sigmas[0] - 1.0) < _UNIPC_FIRST_SIGMA_EPS:
    sigmas[0] -= _UNIPC_FIRST_SIGMA_EPS
  timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)  # truncation toward 0, as torch's cast
  return np.concatenate([sigmas, [0.0]]).astype(np.float32), timesteps


def _shift_fp64(s: np.ndarray, shift: float) -> np.ndarray:
  """s' = shift s / (1 + (shift - 1) s) in float64."""
  return shift * s / (1 + (shift - 1) * s)


def _shift_fp32(s: np.ndarray, shift: float) -> np.ndarray:
  """The same map with every operation rounded to fp32, as torch computes it on fp32 tensors."""
  one = np.float32(1)
  return np.float32(shift) * s / (one + np.float32(shift - 1) * s)


def check_grid_args(num_steps, shift):
  """num_steps an int >= 1, shift a finite number > 0: the arguments of every sigma grid."""
  require_int("num_steps", num_steps, 1)
  if not isinstance(shift, (int, float, np.floating)) or isinstance(shift, bool) or not math.isfinite(shift) \
      or shift <= 0:
    raise ValueError(f"shift must be a finite number > 0 (1 = no shift), got {shift!r}")


# --- Euler ---------------------------------------------------------------------------------------------------

def euler_step(x, v, sigma, sigma_next) -> jax.Array:
  """One flow Euler step x + (s_next - s) v in fp32 (diffusers FlowMatchEulerDiscreteScheduler.step).

  x, v: latents and predicted velocity of one shape; sigma, sigma_next: scalars (or broadcastable arrays).
  """
  x, v = f32(x), f32(v)
  return x + (f32(sigma_next) - f32(sigma)) * v


# --- UniPC (order 2, bh2, predicting x0, lower order on the last step) ----------------------------------------
#
# With alpha = 1 - s, lambda = log(alpha / s), h_i = lambda_{i+1} - lambda_i and B_i = expm1(-h_i) (bh2):
#   UniP  x_{i+1} = (s_{i+1} / s_i) x_i - alpha_{i+1} B_i m_i - [order 2] alpha_{i+1} B_i rho_p D_i
#         with m_i the x0 prediction at step i, D_i = (m_{i-1} - m_i) / r_i, r_i = (lambda_{i-1} - lambda_i) / h_i,
#         rho_p = 1/2.
#   UniC  redoes step i-1 -> i from x_{i-1} with the new prediction m_i:
#         x_i^c = (s_i / s_{i-1}) x_{i-1} - alpha_i B_{i-1} m_{i-1}
#                 - alpha_i B_{i-1} (rho_1 D_{i-1} + rho_t (m_i - m_{i-1}))
#         rho_t = 1/2 at order 1; at order 2, [rho_1, rho_t] solves [[1, 1], [r_{i-1}, 1]] rho = [b_1, b_2],
#         b_1 = (B / (-h) - 1) / B, b_2 = 2 ((B / (-h) - 1) / (-h) - 1/2) / B.
# The scalars are functions of the static grid alone, so they are computed once on the host in float64 from the
# fp32 sigmas: the formulas cancel catastrophically for small h (b_2 loses ~log10(1/h^2) digits), so fp32 math on
# device would make the coefficients depend on each platform's log / expm1; float64 keeps them within fp32
# rounding of the exact values. diffusers evaluates them in fp32 torch: per step its outputs stay within ~1e-6 of
# these at 50 steps, and drift further from exact math than these do at hundreds of steps.


class UniPCCoefficients(NamedTuple):
  """Per-step scalars of UniPC-bh2 on one flow grid, fp32 [N] each (N steps); entries a step never uses are 0."""

  sigma: np.ndarray  # s_i: the x0 prediction is m_i = x_i - s_i v_i
  scale: np.ndarray  # s_{i+1} / s_i
  x0_weight: np.ndarray  # alpha_{i+1} B_i; -1 on the last step (s_N = 0), which makes x_N = m_{N-1}
  pred_d1: np.ndarray  # alpha_{i+1} B_i rho_p / r_i: coefficient of (m_{i-1} - m_i) in an order-2 UniP
  corr1_t: np.ndarray  # alpha_i B_{i-1} / 2: coefficient of (m_i - m_{i-1}) in an order-1 UniC at step i
  corr2_t: np.ndarray  # alpha_i B_{i-1} rho_t: the same in an order-2 UniC
  corr2_d1: np.ndarray  # alpha_i B_{i-1} rho_1 / r_{i-1}: coefficient of (m_{i-2} - m_{i-1}) in an order-2 UniC


def unipc_coefficients(sigmas) -> UniPCCoefficients:
  """The UniPC-bh2 (x0-predicting) step scalars of a flow grid `sigmas` [N + 1] (fp32, decreasing, last one 0)."""
  s = np.asarray(sigmas, np.float32).astype(np.float64)
  if s.ndim != 1 or s.shape[0] < 2 or s[-1] != 0 or not np.all(s[:-1] > 0) or not np.all(s[:-1] < 1) \
      or not np.all(np.diff(s) < 0):
    raise ValueError(f"sigmas must be a decreasing flow grid [N + 1] in (0, 1) ending in 0 (`unipc_sigmas`), "
                     f"got {np.asarray(sigmas)!r}")
  n = s.shape[0] - 1
  with np.errstate(divide="ignore"):
    lam = np.log(1.0 - s) - np.log(s)  # [N + 1], +inf at s = 0
  h = lam[1:] - lam[:-1]  # [N], +inf on the last step
  b = np.expm1(-h)  # [N], -1 on the last step
  alpha_next = 1.0 - s[1:]  # [N]
  x0_weight = alpha_next * b
  pred_d1, corr1_t, corr2_t, corr2_d1 = (np.zeros(n) for _ in range(4))
  for i in range(1, n):
    if np.isfinite(h[i]):  # an order-2 predictor needs a previous prediction and a finite step
      pred_d1[i] = x0_weight[i] * 0.5 / ((lam[i - 1] - lam[i]) / h[i])
    g = (1.0 - s[i]) * b[i - 1]  # alpha_i B_{i-1}
    corr1_t[i] = g * 0.5
    if i >= 2:
      hh = -h[i - 1]
      b1 = (b[i - 1] / hh - 1.0) / b[i - 1]
      b2 = ((b[i - 1] / hh - 1.0) / hh - 0.5) * 2.0 / b[i - 1]
      rk = (lam[i - 2] - lam[i - 1]) / h[i - 1]  # < 0, so 1 - rk > 1
      rho_1 = (b1 - b2) / (1.0 - rk)
      corr2_t[i] = g * (b1 - rho_1)
      corr2_d1[i] = g * rho_1 / rk
  return UniPCCoefficients(*(np.asarray(a, np.float32) for a in (s[:-1], s[1:] / s[:-1], x0_weight, pred_d1,
                                                                   corr1_t, corr2_t, corr2_d1)))


class UniPCState(NamedTuple):
  """The multistep memory of UniPC between calls of `unipc_step` (a pytree, so it can ride a `lax.fori_loop`).

  `step` is i: the sample handed to the next `unipc_step` is at noise level s_i.
  """

  step: jax.Array  # [] int32
  x0_prev: jax.Array  # [*sample] fp32 m_{i-1}, the previous step's x0 prediction (zeros before the first step)
  x0_prev2: jax.Array  # [*sample] fp32 m_{i-2}
  last_sample: jax.Array  # [*sample] fp32 x_{i-1}, the previous predictor's input, where the corrector restarts
  last_order: jax.Array  # [] int32 order of the previous predictor = order of the next corrector; 0 = none yet
  warmup: jax.Array  # [] int32 steps taken in this run, capped at the order (diffusers' lower_order_nums)


def unipc_init(sample, start_step: int = 0, order: int = UNIPC_ORDER) -> UniPCState:
  """An empty UniPC state for latents shaped like `sample`, starting at s_{start_step}.

  Only order 2 (Wan's setting) is implemented; other orders raise ValueError. Starting mid-schedule
  (start_step > 0) warms up at order 1 again, as diffusers does when its first `step` is at a later timestep.
  """
  if isinstance(order, bool) or order != UNIPC_ORDER:
    raise ValueError(f"UniPC order {order!r} is not implemented; only order {UNIPC_ORDER} (Wan's setting) is")
  require_int("start_step", start_step, 0)
  zeros = jnp.zeros(jnp.shape(sample), jnp.float32)
  return UniPCState(step=jnp.asarray(start_step, jnp.int32), x0_prev=zeros, x0_prev2=zeros, last_sample=zeros,
                    last_order=jnp.zeros((), jnp.int32), warmup=jnp.zeros((), jnp.int32))


def unipc_step(state: UniPCState, v, sample, coeffs: UniPCCoefficients) -> tuple[jax.Array, UniPCState]:
  """One UniPC step (diffusers UniPCMultistepScheduler.step with flow sigmas): corrector, then predictor.

  1. m_i = x_i - s_i v (flow prediction -> x0 prediction), from the sample the model saw.
  2. UniC: when this run has a previous step, x_i is recomputed from x_{i-1} with m_i; its order is the previous
     predictor's.
  3. UniP of order min(2, N - i, steps taken + 1) moves the corrected x_i to s_{i+1}: order 1 on the first step
     (warm-up) and on the last (lower_order_final, where s_N = 0 makes x_N = m_{N-1}), 2 in between.

  Args:
    state: from `unipc_init` or the previous call.
    v: [*sample] velocity predicted at (sample, s_i).
    sample: [*sample] latents x_i.
    coeffs: `unipc_coefficients(sigmas)` of the grid (N static).

  Returns:
    x_{i+1} (fp32) and the next state.
  """
  if jnp.shape(v) != jnp.shape(sample) or jnp.shape(state.x0_prev) != jnp.shape(sample):
    raise ValueError(f"v {jnp.shape(v)}, sample {jnp.shape(sample)} and the state's latents "
                     f"{jnp.shape(state.x0_prev)} must have one shape")
  c = UniPCCoefficients(*(f32(a) for a in coeffs))
  num_steps = c.sigma.shape[0]
  i = state.step
  sample, v = f32(sample), f32(v)
  x0 = sample - c.sigma[i] * v

  corrected = jax.lax.cond(state.last_order > 0, lambda: _unic(state, x0, c), lambda: sample)
  order = jnp.minimum(jnp.minimum(UNIPC_ORDER, num_steps - i), state.warmup + 1).astype(jnp.int32)
  d1 = jnp.where(order == 2, c.pred_d1[i], 0.0)
  prev_sample = c.scale[i] * corrected - c.x0_weight[i] * x0 - d1 * (state.x0_prev - x0)
  new_state = UniPCState(step=i + 1, x0_prev=x0, x0_prev2=state.x0_prev, last_sample=corrected, last_order=order,
                         warmup=jnp.minimum(state.warmup + 1, UNIPC_ORDER))
  return prev_sample, new_state


def _unic(state: UniPCState, x0, c: UniPCCoefficients) -> jax.Array:
  """UniC at step i >= 1: step i-1 -> i again from x_{i-1}, now knowing m_i = x0."""
  j = state.step - 1
  m0, m1 = state.x0_prev, state.x0_prev2
  second = state.last_order == 2
  t = jnp.where(second, c.corr2_t[state.step], c.corr1_t[state.step])
  d1 = jnp.where(second, c.corr2_d1[state.step], 0.0)
  return c.scale[j] * state.last_sample - c.x0_weight[j] * m0 - d1 * (m1 - m0) - t * (x0 - m0)
