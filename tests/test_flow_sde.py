"""Flow-GRPO SDE sampling: each kind's mean, std and log-prob against float64 NumPy formulas, samples against
their Gaussian, the ODE limit, RatioNorm's identity, the per-step KL, the rollout replayed step by step and scored
again (on-policy ratio 1), fixed frames, the trained-step window and bad arguments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.conditioning import apply_fixed_frames
from planx_jax.sampling.flow_sampler import sample_flow
from planx_jax.sampling.flow_schedulers import euler_sigmas, euler_step
from planx_jax.sampling.flow_sde import (
    SDE_KINDS,
    gaussian_log_prob,
    guided_velocity,
    mean_kl,
    ratio_norm_log_ratio,
    sample_sde,
    sde_step,
    sde_window,
)

SHAPE = (2, 3, 2, 2, 4)  # [B, F, H, W, C]
SIGMA_MAX = 0.93
GUIDANCE = 4.0


def _key(seed):
  """A PRNG key; the rbg generator compiles in a fraction of threefry's time on CPU (the sampler takes either)."""
  return jax.random.key(seed, impl="rbg")


def _normal(seed, shape=SHAPE):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np_mean_std(kind, x, v, s, s_prev, a=0.7, eta=0.3, sigma_max=SIGMA_MAX, sigma_min=0.0):
  """The step's mean and std in float64, written from the formulas of the spec (s, s_prev: [B] or scalars)."""
  x, v = x.astype(np.float64), v.astype(np.float64)
  s = np.broadcast_to(np.asarray(s, np.float64), (x.shape[0],)).reshape(-1, 1, 1, 1, 1)
  s_prev = np.broadcast_to(np.asarray(s_prev, np.float64), (x.shape[0],)).reshape(-1, 1, 1, 1, 1)
  dt = s_prev - s
  if kind == "cps":
    std = s_prev * np.sin(a * np.pi / 2)
    x0, x1 = x - s * v, x + (1 - s) * v
    return x0 * (1 - s_prev) + x1 * np.sqrt(s_prev**2 - std**2), std
  if kind == "flow_grpo":
    noise_scale = a * np.sqrt(s / (1 - np.where(s == 1, sigma_max, s)))
  elif kind == "wan":
    noise_scale = sigma_min + (sigma_max - sigma_min) * s
  else:
    noise_scale = eta * np.ones_like(s)
  mean = x * (1 + noise_scale**2 * dt / (2 * s)) + v * (1 + noise_scale**2 * (1 - s) / (2 * s)) * dt
  return mean, noise_scale * np.sqrt(-dt)


def _np_log_prob(sample, mean, std, mask=None):
  """Mean over the masked elements of the float64 Gaussian log-density, per row."""
  sample, mean, std = (np.asarray(a, np.float64) for a in (sample, mean, std))
  density = -(sample - mean)**2 / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)
  return _np_masked_mean(density, mask)


def _np_masked_mean(values, mask):
  b = values.shape[0]
  if mask is None:
    return values.reshape(b, -1).mean(axis=1)
  m = np.asarray(mask, np.float64)
  m = np.broadcast_to(m.reshape(m.shape + (1,) * (values.ndim - m.ndim)), values.shape)
  return (values * m).reshape(b, -1).sum(axis=1) / m.reshape(b, -1).sum(axis=1)


MASKS = {
    "none": None,
    "frames": np.array([[0, 1, 1], [1, 0, 1]], np.float32),
    "elements": (np.random.default_rng(7).random(SHAPE) > 0.4).astype(np.float32),
}


# --- One step -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SDE_KINDS)
@pytest.mark.parametrize("sigmas", [(1.0, 0.8), (0.6, 0.35), (np.array([0.9, 0.5], np.float32),
                                                              np.array([0.7, 0.25], np.float32))])
def test_step_matches_float64_formulas(kind, sigmas):
  x, v, eps, other = (_normal(seed) for seed in range(4))
  s, s_prev = sigmas
  mean, std = _np_mean_std(kind, x, v, s, s_prev)
  for name, mask in MASKS.items():
    step = sde_step(x, v, s, s_prev, kind=kind, sigma_max=SIGMA_MAX, noise=eps, mask=mask)
    assert step.std.shape == (2, 1, 1, 1, 1) and step.log_prob.shape == (2,), name
    np.testing.assert_allclose(step.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step.std, std, rtol=1e-5, atol=0)
    np.testing.assert_allclose(step.prev_sample, mean + std * eps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step.log_prob, _np_log_prob(step.prev_sample, mean, std, mask), rtol=1e-5, atol=1e-6)
    scored = sde_step(x, v, s, s_prev, kind=kind, sigma_max=SIGMA_MAX, prev_sample=other, mask=mask)
    np.testing.assert_array_equal(scored.prev_sample, other)
    np.testing.assert_allclose(scored.log_prob, _np_log_prob(other, mean, std, mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gaussian_log_prob(other, step.mean, step.std, mask),
                               _np_log_prob(other, mean, std, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["flow_grpo", "cps"])
def test_samples_follow_the_step_gaussian(kind):
  n = 20000
  x, v = _normal(0, (1, 2, 1, 2, 2)), _normal(1, (1, 2, 1, 2, 2))
  step = sde_step(np.repeat(x, n, 0), np.repeat(v, n, 0), 0.7, 0.55, kind=kind, rng=_key(5))
  samples = np.asarray(step.prev_sample, np.float64)
  mean, std = _np_mean_std(kind, x, v, 0.7, 0.55)
  std = float(std.ravel()[0])
  assert np.all(np.abs(samples.mean(0) - mean[0]) < 5 * std / math.sqrt(n))
  assert np.all(np.abs(samples.std(0) / std - 1) < 5 / math.sqrt(2 * n))


def test_mean_tends_to_the_euler_step_as_the_noise_vanishes():
  x, v = _normal(0), _normal(1)
  euler = np.asarray(euler_step(x, v, 0.6, 0.45), np.float64)
  gaps = []
  for a in (0.2, 0.1):
    mean = np.asarray(sde_step(x, v, 0.6, 0.45, noise_level=a, noise=np.zeros(SHAPE, np.float32)).mean, np.float64)
    gaps.append(np.abs(mean - euler).max())
  assert 0 < gaps[1] < gaps[0] and abs(gaps[0] / gaps[1] - 4) < 0.05  # the drift correction is O(a^2)
  for kwargs in (dict(noise_level=0.0), dict(kind="dance", eta=0.0)):  # a = 0: the Euler step exactly
    step = sde_step(x, v, 0.6, 0.45, noise=_normal(2), **kwargs)
    np.testing.assert_array_equal(step.prev_sample, euler_step(x, v, 0.6, 0.45))
    np.testing.assert_array_equal(step.std, 0)
    np.testing.assert_array_equal(step.log_prob, 0)


@pytest.mark.parametrize("kind", SDE_KINDS)
def test_deterministic_step_is_euler_step(kind):
  x, v = _normal(0), _normal(1)
  s, s_prev = np.array([0.8, 0.3], np.float32), np.array([0.5, 0.0], np.float32)
  step = sde_step(x, v, s, s_prev, kind=kind, sigma_max=SIGMA_MAX, deterministic=True)
  expected = euler_step(x, v, s.reshape(2, 1, 1, 1, 1), s_prev.reshape(2, 1, 1, 1, 1))
  np.testing.assert_array_equal(step.prev_sample, expected)
  np.testing.assert_array_equal(step.mean, expected)
  np.testing.assert_array_equal(step.std, 0)
  np.testing.assert_array_equal(step.log_prob, 0)


def test_cps_onto_zero_is_deterministic():
  x, v = _normal(0), _normal(1)
  step = sde_step(x, v, 0.3, 0.0, kind="cps", noise=_normal(2))
  np.testing.assert_array_equal(step.std, 0)
  np.testing.assert_array_equal(step.log_prob, 0)
  np.testing.assert_allclose(step.prev_sample, euler_step(x, v, 0.3, 0.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mask", [None, MASKS["frames"]])
def test_log_prob_gradient_flows_through_the_mean_only(mask):
  x, v, eps = _normal(0), _normal(1), _normal(2)
  s, s_prev, a = 0.7, 0.5, 0.7

  def total_log_prob(v):
    return jnp.sum(sde_step(x, v, s, s_prev, noise_level=a, noise=eps, mask=mask).log_prob)

  grad = np.asarray(jax.grad(total_log_prob)(jnp.asarray(v)), np.float64)
  # prev_sample = mean + std eps is held fixed, so d/dv of -(prev - mean)^2 / (2 std^2) is eps / std * dmean/dv
  noise_scale2 = a**2 * s / (1 - s)
  dmean_dv = (1 + noise_scale2 * (1 - s) / (2 * s)) * (s_prev - s)
  std = math.sqrt(noise_scale2 * (s - s_prev))
  m = np.ones(SHAPE) if mask is None else np.broadcast_to(mask[:, :, None, None, None], SHAPE)
  count = m.reshape(2, -1).sum(axis=1).reshape(2, 1, 1, 1, 1)
  np.testing.assert_allclose(grad, eps * dmean_dv / std * m / count, rtol=1e-4, atol=1e-7)


# --- KL and RatioNorm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_name", list(MASKS))
def test_ratio_norm_is_mean_of_noise_times_mean_shift(mask_name):
  mask = MASKS[mask_name]
  rng = np.random.default_rng(11)
  std = rng.uniform(0.05, 0.5, (2, 1, 1, 1, 1)).astype(np.float32)
  old_mean = rng.standard_normal(SHAPE).astype(np.float32)
  mean = old_mean + (0.3 * std * rng.standard_normal(SHAPE)).astype(np.float32)
  eps = _normal(3)
  prev = old_mean + std * eps
  log_prob = gaussian_log_prob(prev, mean, std, mask)
  old_log_prob = gaussian_log_prob(prev, old_mean, std, mask)
  got = ratio_norm_log_ratio(log_prob, old_log_prob, mean, old_mean, std, mask)
  np.testing.assert_allclose(got, _np_masked_mean(eps.astype(np.float64) * (mean - old_mean), mask), rtol=0,
                             atol=1e-5)
  np.testing.assert_array_equal(ratio_norm_log_ratio(old_log_prob, old_log_prob, old_mean, old_mean, std, mask), 0)


def test_ratio_norm_through_sde_steps_of_two_policies():
  x, v_old, eps = _normal(0), _normal(1), _normal(2)
  v_new = v_old + 0.05 * _normal(3)
  old = sde_step(x, v_old, 0.8, 0.6, noise=eps)
  new = sde_step(x, v_new, 0.8, 0.6, prev_sample=old.prev_sample)
  got = ratio_norm_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std)
  expected = _np_masked_mean(eps.astype(np.float64) * (np.asarray(new.mean, np.float64) - old.mean), None)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_mean_kl_matches_numpy():
  mean, ref = _normal(0), _normal(1)
  std = np.array([0.3, 0.0], np.float32).reshape(2, 1, 1, 1, 1)
  for mask in MASKS.values():
    got = mean_kl(mean, ref, std, mask)
    diff2 = (mean.astype(np.float64) - ref)**2
    np.testing.assert_allclose(got[0], _np_masked_mean(diff2 / (2 * 0.3**2), mask)[0], rtol=1e-5)
    assert got[1] == 0  # a deterministic row


# --- The rollout ----------------------------------------------------------------------------------------------

def toy_velocity(x, t, c):
  """A closed-form velocity: affine in x with a timestep-dependent slope (t: [B] or [B, F]) and a condition shift."""
  t = t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) / 1000.0
  return (0.5 + 0.3 * t) * x - (0.0 if c is None else c)


COND = jnp.asarray(_normal(20, (2, 1, 1, 1, 4)))
UNCOND = jnp.asarray(_normal(21, (2, 1, 1, 1, 4)))
FIXED = jnp.asarray(_normal(22))
FRAME_MASK = np.array([[0, 1, 1], [1, 1, 1]], np.float32)  # row 0 TI2V (frame 0 fixed), row 1 T2V
CHUNK = np.array([[1, 1, 0], [0, 1, 1]], np.float32)  # a transition chunk; row 0 overlaps the fixed frame


@pytest.fixture(scope="module", params=["flow_grpo", "cps"])
def rollout(request):
  kind = request.param
  rng = _key(9)
  steps = np.array([True, True, False, True, False])
  run = jax.jit(lambda noise, rng, steps: sample_sde(
      toy_velocity, noise, rng, cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE, num_steps=5, shift=3.0,
      kind=kind, sde_steps=steps, fixed_latents=FIXED, frame_mask=FRAME_MASK, logprob_mask=CHUNK))
  return kind, rng, steps, run(jnp.asarray(_normal(23)), rng, steps)


def test_guided_velocity_is_cfg_with_per_frame_timesteps():
  x = _normal(0)
  v = guided_velocity(toy_velocity, x, 700.0, cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE,
                      frame_mask=FRAME_MASK)
  t = FRAME_MASK[:, :, None, None, None] * 0.7
  v_cond, v_uncond = (0.5 + 0.3 * t) * x - COND, (0.5 + 0.3 * t) * x - UNCOND
  np.testing.assert_allclose(v, v_uncond + GUIDANCE * (v_cond - v_uncond), rtol=1e-6, atol=1e-6)


def test_rollout_replays_step_by_step(rollout):
  kind, rng, steps, traj = rollout
  sigmas, timesteps = euler_sigmas(5, 3.0)
  np.testing.assert_array_equal(traj.sigmas, sigmas)
  np.testing.assert_array_equal(traj.timesteps, timesteps)
  np.testing.assert_array_equal(traj.sde_steps, steps)
  assert traj.latents.shape == (6,) + SHAPE and traj.means.shape == (5,) + SHAPE and traj.log_probs.shape == (5, 2)
  np.testing.assert_array_equal(traj.logprob_mask, FRAME_MASK * CHUNK)
  np.testing.assert_array_equal(traj.latents[0], apply_fixed_frames(_normal(23), FIXED, FRAME_MASK))
  keys = jax.random.split(rng, 5)
  for i in range(5):
    x = traj.latents[i]
    v = guided_velocity(toy_velocity, x, timesteps[i], cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE,
                        frame_mask=FRAME_MASK)
    if steps[i]:
      step = sde_step(x, v, sigmas[i], sigmas[i + 1], kind=kind, sigma_max=float(sigmas[1]),
                      noise=jax.random.normal(keys[i], SHAPE), mask=FRAME_MASK * CHUNK)
      expected, mean, log_prob = step.prev_sample, step.mean, step.log_prob
    else:
      expected = mean = euler_step(x, v, sigmas[i], sigmas[i + 1])
      log_prob = np.zeros(2)
    np.testing.assert_allclose(traj.latents[i + 1], apply_fixed_frames(expected, FIXED, FRAME_MASK), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(traj.means[i], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj.log_probs[i], log_prob, rtol=1e-5, atol=1e-5)
  assert np.all(traj.log_probs[steps] != 0) and np.all(traj.log_probs[~steps] == 0)


def test_stored_transitions_score_the_same_on_policy(rollout):
  kind, _, steps, traj = rollout

  @jax.jit
  def rescore(traj, i):
    x = traj.latents[i]
    v = guided_velocity(toy_velocity, x, traj.timesteps[i], cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE,
                        frame_mask=FRAME_MASK)
    return sde_step(x, v, traj.sigmas[i], traj.sigmas[i + 1], kind=kind, sigma_max=traj.sigmas[1],
                    prev_sample=traj.latents[i + 1], mask=traj.logprob_mask)

  for i in np.flatnonzero(steps):
    step = rescore(traj, int(i))
    np.testing.assert_allclose(step.log_prob, traj.log_probs[i], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.exp(step.log_prob - traj.log_probs[i]), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(step.mean, traj.means[i], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ratio_norm_log_ratio(step.log_prob, traj.log_probs[i], step.mean, traj.means[i],
                                                    step.std, traj.logprob_mask), 0.0, rtol=0, atol=1e-6)


def test_fixed_frames_stay_fixed_and_do_not_count(rollout):
  kind, _, steps, traj = rollout
  np.testing.assert_array_equal(traj.latents[:, 0, 0], np.broadcast_to(FIXED[0, 0], traj.latents[:, 0, 0].shape))
  i = int(np.flatnonzero(steps)[0])
  x = traj.latents[i]
  v = guided_velocity(toy_velocity, x, traj.timesteps[i], cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE,
                      frame_mask=FRAME_MASK)
  scores = {}
  for name, prev in (("stored", traj.latents[i + 1]),
                     ("moved", traj.latents[i + 1] + (1 - FRAME_MASK * CHUNK)[:, :, None, None, None] * 3.0)):
    for mask_name, mask in (("counted", traj.logprob_mask), ("all", None)):
      scores[name, mask_name] = sde_step(x, v, traj.sigmas[i], traj.sigmas[i + 1], kind=kind,
                                         sigma_max=float(traj.sigmas[1]), prev_sample=prev, mask=mask).log_prob
  np.testing.assert_array_equal(scores["stored", "counted"], scores["moved", "counted"])
  assert np.all(np.abs(scores["stored", "all"] - scores["moved", "all"]) > 1e-3)  # the test can see the fixed frames


@pytest.mark.parametrize("kind,kwargs", [("flow_grpo", dict(noise_level=0.0)), ("cps", dict(noise_level=0.0)),
                                         ("dance", dict(eta=0.0))])
def test_without_noise_the_rollout_is_the_euler_sampler(kind, kwargs):
  noise = jnp.asarray(_normal(30))
  common = dict(cond=COND, uncond=UNCOND, guidance_scale=GUIDANCE, num_steps=4, shift=5.0, fixed_latents=FIXED,
                frame_mask=FRAME_MASK)
  traj = sample_sde(toy_velocity, noise, _key(0), kind=kind, **kwargs, **common)
  ode = sample_flow(toy_velocity, noise, solver="euler", **common)
  np.testing.assert_allclose(traj.latents[-1], ode, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(traj.log_probs, 0)
  assert not np.any(traj.sde_steps)


def test_rollout_defaults_and_tracing():
  traces = []

  def counting_velocity(x, t, c):
    traces.append(c is COND)
    return toy_velocity(x, t, c)

  noise = jnp.asarray(_normal(31))
  run = jax.jit(lambda noise, rng, steps: sample_sde(counting_velocity, noise, rng, cond=COND, uncond=UNCOND,
                                                     num_steps=4, sde_steps=steps, keep_means=False))
  first = run(noise, _key(1), sde_window(0, 4, 1))
  second = run(noise, _key(1), sde_window(0, 4))
  assert sorted(traces) == [False, True]  # one trace per branch, for every step and both windows
  assert first.means is None and first.logprob_mask is None
  np.testing.assert_array_equal(second.sde_steps, [True, True, True, False])
  np.testing.assert_array_equal(first.sde_steps, sde_window(0, 4, 1))
  default = sample_sde(toy_velocity, noise, _key(1), num_steps=4, kind="wan")
  np.testing.assert_array_equal(default.sde_steps, [True, True, True, False])  # the terminal step stays an ODE step
  assert np.all(default.log_probs[:3] != 0) and np.all(default.log_probs[3] == 0)


# --- The trained-step window ----------------------------------------------------------------------------------

def test_sde_window_defaults_to_the_first_99_percent_of_steps():
  for num_steps, trained in ((10, 9), (2, 1), (100, 99), (200, 198)):
    steps = sde_window(0, num_steps)
    assert steps.dtype == bool and steps.shape == (num_steps,)
    np.testing.assert_array_equal(steps, np.arange(num_steps) < trained)
  np.testing.assert_array_equal(sde_window(0, 10, train_fraction=1.0), np.arange(10) < 9)  # never the terminal step
  np.testing.assert_array_equal(sde_window(0, 10, train_fraction=0.5), np.arange(10) < 5)


def test_sde_window_is_a_random_contiguous_window():
  starts = set()
  for seed in range(200):
    steps = sde_window(seed, 10, 3)
    (on,) = np.nonzero(steps)
    assert len(on) == 3 and np.all(np.diff(on) == 1) and on[-1] <= 8
    starts.add(int(on[0]))
  assert starts == set(range(7))  # every start in [0, 9 - 3] occurs
  np.testing.assert_array_equal(sde_window(5, 10, 3), sde_window(5, 10, 3))
  ranged = [np.nonzero(sde_window(seed, 10, 2, window_range=(2, 6)))[0] for seed in range(100)]
  assert {int(on[0]) for on in ranged} == {2, 3, 4}
  for rng in (np.random.default_rng(0), _key(3)):
    assert sde_window(rng, 10, 2).sum() == 2
  np.testing.assert_array_equal(sde_window(0, 10, 9), np.arange(10) < 9)


# --- Bad arguments --------------------------------------------------------------------------------------------

X = np.zeros(SHAPE, np.float32)
BAD_CALLS = [
    (lambda: sde_step(X, X, 0.5, 0.4, kind="ddim", noise=X), "kind must be one of"),
    (lambda: sde_step(X[0], X[0], 0.5, 0.4, noise=X[0]), r"x must be float latents \[B, F, H, W, C\]"),
    (lambda: sde_step(X, X[:1], 0.5, 0.4, noise=X), "v must be a float array shaped like x"),
    (lambda: sde_step(X, X, 0.4, 0.5, noise=X), "0 <= sigma_prev < sigma <= 1"),
    (lambda: sde_step(X, X, 1.2, 0.5, noise=X), "0 <= sigma_prev < sigma <= 1"),
    (lambda: sde_step(X, X, np.ones(3, np.float32), 0.5, noise=X), r"sigma must be a float scalar or \[B\]"),
    (lambda: sde_step(X, X, 1.0, 0.5, noise=X), "needs sigma_max"),
    (lambda: sde_step(X, X, 0.5, 0.4, kind="wan", noise=X), "kind 'wan' needs sigma_max"),
    (lambda: sde_step(X, X, 0.5, 0.4, sigma_max=1.0, noise=X), "sigma_max"),
    (lambda: sde_step(X, X, 0.5, 0.4, noise_level=-0.1, noise=X), "noise_level must be"),
    (lambda: sde_step(X, X, 0.5, 0.4, kind="cps", noise_level=1.5, noise=X), "noise_level in"),
    (lambda: sde_step(X, X, 0.5, 0.4), "exactly one of noise, rng or prev_sample"),
    (lambda: sde_step(X, X, 0.5, 0.4, noise=X, prev_sample=X), "exactly one of noise, rng or prev_sample"),
    (lambda: sde_step(X, X, 0.5, 0.4, deterministic=True, noise=X), "deterministic step takes no noise"),
    (lambda: sde_step(X, X, 0.5, 0.4, noise=X, mask=np.ones((3, 2))), "leading prefix"),
    (lambda: gaussian_log_prob(X, X, np.ones((3,), np.float32)), "std must broadcast"),
    (lambda: ratio_norm_log_ratio(np.zeros(2), np.zeros(2), X, X, np.ones(SHAPE)), "one value per row"),
    (lambda: ratio_norm_log_ratio(np.zeros(3), np.zeros(2), X, X, 1.0), r"log_prob must be \[B\]"),
    (lambda: sample_sde(toy_velocity, X, _key(0), sde_steps=np.ones(3, bool)), "sde_steps must be"),
    (lambda: sample_sde(toy_velocity, X, _key(0), frame_mask=FRAME_MASK), "needs fixed_latents"),
    (lambda: sample_sde(toy_velocity, X, _key(0), num_steps=0), "num_steps must be"),
    (lambda: sample_sde(toy_velocity, X, _key(0), logprob_mask=np.ones(3)), "logprob_mask must be"),
    (lambda: sample_sde(lambda x, t, c: x[:1], X, _key(0)), "must return float velocities"),
    (lambda: sde_window(0, 1), "num_steps must be an int >= 2"),
    (lambda: sde_window(0, 10, 10), "does not fit"),
    (lambda: sde_window(0, 10, 2, window_range=(0, 10)), "never trained"),
    (lambda: sde_window(0, 10, train_fraction=0.0), "train_fraction"),
    (lambda: sde_window("seed", 10, 2), "rng_or_seed"),
]


@pytest.mark.parametrize("call,match", BAD_CALLS)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
