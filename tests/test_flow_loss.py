"""Flow matching (Plan-X Eq. 4): the masked loss against NumPy in value and gradient, noising endpoints, timestep
samplers (moments, diffusers parity), the shift map, first-frame conditioning, text-drop schedule, CFG dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from planx_jax.conditioning import apply_fixed_frames, first_frame_mask
from planx_jax.losses.flow import (NUM_TRAIN_TIMESTEPS, FlowLoss, TimestepSampling, drop_condition, flow_matching_loss,
                                   interpolate, per_frame_sigmas, per_token_sigmas, sample_sigmas, shift_sigmas,
                                   sigma_to_timestep, text_drop_prob, velocity_target, x0_from_velocity)

B, F, H, W, C = 3, 4, 2, 6, 5
SHAPE = (B, F, H, W, C)


def random_latents(seed, shape=SHAPE):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=shape).astype(np.float32) for _ in range(3))  # pred, x0, noise


def numpy_loss(pred, x0, noise, mask):
  """Direct formula in float64: mean of (pred - (noise - x0))^2 over the elements where the broadcast mask is 1,
  and its gradient with respect to `pred`."""
  pred, x0, noise = (np.asarray(a, np.float64) for a in (pred, x0, noise))
  m = np.broadcast_to(np.asarray(mask, np.float64).reshape(mask.shape + (1,) * (pred.ndim - mask.ndim)), pred.shape)
  m = (m != 0).astype(np.float64)
  diff = pred - (noise - x0)
  count = m.sum()
  return (diff**2 * m).sum() / max(count, 1.0), 2.0 * diff * m / max(count, 1.0), int(count)


def assert_close(got, expected, rtol=1e-6):
  """max |got - expected| <= rtol * max(|expected|, 1)."""
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  assert got.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), 1.0) if expected.size else 1.0
  assert np.all(np.isfinite(got)) and float(np.max(np.abs(got - expected), initial=0.0)) <= rtol * scale


loss_and_grad = jax.jit(jax.value_and_grad(lambda p, x0, n, m: flow_matching_loss(p, x0, n, m).loss))


# --- flow_matching_loss -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_kind", ["none", "example", "frame0_excluded", "position", "element"])
def test_loss_value_and_gradient_match_numpy(mask_kind):
  pred, x0, noise = random_latents(0)
  rng = np.random.default_rng(1)
  mask = {
      "none": None,
      "example": np.array([1, 0, 1], np.int32),
      "frame0_excluded": np.asarray(first_frame_mask(B, F)),
      "position": rng.random((B, F, H, W)) < 0.6,
      "element": rng.random(SHAPE) < 0.4,
  }[mask_kind]
  np_mask = np.ones((B,)) if mask is None else mask
  expected, expected_grad, expected_count = numpy_loss(pred, x0, noise, np_mask)
  out = flow_matching_loss(pred, x0, noise, mask)
  assert isinstance(out, FlowLoss) and out.count.dtype == jnp.int32 and out.loss.dtype == jnp.float32
  assert int(out.count) == expected_count
  assert_close(out.loss, expected)
  assert_close(out.error_sum, expected * expected_count)
  if mask is None:
    value, grad = jax.jit(jax.value_and_grad(lambda p: flow_matching_loss(p, x0, noise).loss))(pred)
  else:
    value, grad = loss_and_grad(pred, x0, noise, mask)
  assert_close(value, expected)
  assert_close(grad, expected_grad)


def test_frame0_mask_ignores_frame0_entirely():
  pred, x0, noise = random_latents(2)
  mask = first_frame_mask(B, F)
  base = flow_matching_loss(pred, x0, noise, mask)
  garbage = pred.copy()
  garbage[:, 0] = 1e3
  changed = flow_matching_loss(garbage, x0, noise, mask)
  assert float(changed.loss) == float(base.loss) and int(base.count) == B * (F - 1) * H * W * C
  grad = jax.grad(lambda p: flow_matching_loss(p, x0, noise, mask).loss)(pred)
  assert not np.asarray(grad)[:, 0].any() and np.asarray(grad)[:, 1:].any()


def test_microbatches_combine_exactly():
  pred, x0, noise = random_latents(3)
  mask = np.random.default_rng(4).random((B, F)) < 0.7
  full = flow_matching_loss(pred, x0, noise, mask)
  parts = [flow_matching_loss(pred[i:i + 1], x0[i:i + 1], noise[i:i + 1], mask[i:i + 1]) for i in range(B)]
  count = sum(int(p.count) for p in parts)
  assert count == int(full.count)
  assert_close(sum(float(p.error_sum) for p in parts) / count, full.loss)


def test_nothing_counted_gives_zero_loss():
  pred, x0, noise = random_latents(5)
  out = flow_matching_loss(pred, x0, noise, np.zeros((B, F), bool))
  assert float(out.loss) == 0.0 and int(out.count) == 0 and float(out.error_sum) == 0.0


def test_bf16_prediction_is_upcast():
  pred, x0, noise = random_latents(6)
  pred_bf16 = jnp.asarray(pred, jnp.bfloat16)
  expected, _, _ = numpy_loss(np.asarray(pred_bf16.astype(jnp.float32)), x0, noise, np.ones((B,)))
  assert_close(flow_matching_loss(pred_bf16, x0, noise).loss, expected)


def test_loss_is_zero_at_the_target_and_target_is_noise_minus_x0():
  _, x0, noise = random_latents(7)
  v = velocity_target(x0, noise)
  np.testing.assert_array_equal(v, noise - x0)
  assert float(flow_matching_loss(v, x0, noise).loss) == 0.0


# --- interpolate / x0_from_velocity -------------------------------------------------------------------------

def test_interpolation_endpoints_are_exact():
  _, x0, noise = random_latents(8)
  np.testing.assert_array_equal(interpolate(x0, noise, np.zeros(B, np.float32)), x0)
  np.testing.assert_array_equal(interpolate(x0, noise, np.ones(B, np.float32)), noise)
  sigma = np.array([0.2, 0.5, 0.9], np.float32)
  expected = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
  assert_close(interpolate(x0, noise, sigma), expected)


def test_per_frame_sigma_keeps_fixed_frames_clean():
  _, x0, noise = random_latents(9)
  sigma = np.array([0.3, 0.7, 1.0], np.float32)
  x_s = np.asarray(interpolate(x0, noise, per_frame_sigmas(sigma, first_frame_mask(B, F, num_fixed=2))))
  np.testing.assert_array_equal(x_s[:, :2], x0[:, :2])
  assert_close(x_s[:, 2:], np.asarray(interpolate(x0, noise, sigma))[:, 2:])


@pytest.mark.parametrize("per_frame", [False, True])
def test_x0_recovered_from_true_velocity(per_frame):
  _, x0, noise = random_latents(10)
  rng = np.random.default_rng(11)
  sigma = rng.random((B, F) if per_frame else (B,)).astype(np.float32)
  x_s = interpolate(x0, noise, sigma)
  assert_close(x0_from_velocity(x_s, velocity_target(x0, noise), sigma), x0, rtol=2e-6)


def test_sigma_to_timestep_scales_by_1000():
  s = np.array([0.0, 0.25, 1.0], np.float32)
  np.testing.assert_array_equal(sigma_to_timestep(s), [0.0, 250.0, 1000.0])
  assert NUM_TRAIN_TIMESTEPS == FlowMatchEulerDiscreteScheduler().config.num_train_timesteps


# --- samplers and shift -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.4, 0.7)])
def test_logit_normal_moments(mean, std):
  s = np.asarray(sample_sigmas(jax.random.key(0), (200_000,), "logit_normal", mean=mean, std=std), np.float64)
  assert s.shape == (200_000,) and s.min() > 0 and s.max() < 1
  logit = np.log(s) - np.log1p(-s)
  # standard errors: std / sqrt(n) ~ 2.2e-3 for the mean, std / sqrt(2 n) ~ 1.6e-3 for the std
  assert abs(logit.mean() - mean) < 0.01 and abs(logit.std() - std) < 0.01


def test_uniform_sampler_covers_unit_interval():
  s = np.asarray(sample_sigmas(jax.random.key(1), (200_000,)), np.float64)
  assert s.min() >= 0.0 and s.max() < 1.0
  assert abs(s.mean() - 0.5) < 0.003 and abs(s.var() - 1 / 12) < 0.002
  deciles = np.quantile(s, np.linspace(0.1, 0.9, 9))
  assert np.max(np.abs(deciles - np.linspace(0.1, 0.9, 9))) < 0.005


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.8)])
def test_logit_normal_matches_diffusers_in_distribution(mean, std):
  n = 200_000
  ours = np.asarray(sample_sigmas(jax.random.key(2), (n,), "logit_normal", mean=mean, std=std), np.float64)
  theirs = compute_density_for_timestep_sampling(
      weighting_scheme="logit_normal", batch_size=n, logit_mean=mean, logit_std=std,
      generator=torch.Generator().manual_seed(0)).double().numpy()
  probs = np.linspace(0.01, 0.99, 99)
  # a two-sample quantile's standard error is below 1.5e-3 here (density >= 0.3 at the 1% tails)
  assert np.max(np.abs(np.quantile(ours, probs) - np.quantile(theirs, probs))) < 0.006


def test_shift_formula_by_hand_and_properties():
  assert float(shift_sigmas(np.float32(0.5), 3.0)) == pytest.approx(0.75, abs=1e-7)  # 1.5 / (1 + 2 * 0.5)
  assert float(shift_sigmas(np.float32(0.25), 0.5)) == pytest.approx(0.125 / 0.875, abs=1e-7)
  s = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
  np.testing.assert_array_equal(shift_sigmas(s, 1.0), s)
  for shift in (0.5, 2.0, 5.0):
    shifted = np.asarray(shift_sigmas(s, shift))
    assert shifted[0] == 0.0 and shifted[-1] == pytest.approx(1.0, abs=1e-7)
    assert np.all(np.diff(shifted) > 0)
    assert np.all(shifted[1:-1] > s[1:-1]) if shift > 1 else np.all(shifted[1:-1] < s[1:-1])


def test_shift_matches_diffusers_flow_match_scheduler():
  scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
  unshifted = np.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1] / NUM_TRAIN_TIMESTEPS
  assert_close(shift_sigmas(unshifted, 5.0), scheduler.sigmas.numpy(), rtol=1e-6)


def test_sampler_applies_shift_and_is_jittable():
  key = jax.random.key(3)
  plain = sample_sigmas(key, (4, 5), "logit_normal", mean=0.2)
  shifted = jax.jit(lambda k: sample_sigmas(k, (4, 5), "logit_normal", mean=0.2, shift=3.0))(key)
  assert shifted.shape == (4, 5) and shifted.dtype == jnp.float32
  assert_close(shifted, shift_sigmas(plain, 3.0))
  config = TimestepSampling("logit_normal", mean=0.2, shift=3.0)
  assert_close(config.sample(key, (4, 5)), shifted)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="normal"), "kind"), (dict(std=0.0), "std"), (dict(std=-1.0), "std"), (dict(shift=0.0), "shift"),
    (dict(mean=float("nan")), "mean"), (dict(shift="2"), "shift")])
def test_timestep_sampling_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TimestepSampling(**kwargs)
  with pytest.raises(ValueError, match=match):
    sample_sigmas(jax.random.key(0), (2,), **kwargs)


def test_sampler_rejects_bad_shape():
  with pytest.raises(ValueError, match="shape"):
    sample_sigmas(jax.random.key(0), (2, -1))
  with pytest.raises(ValueError, match="shape"):
    sample_sigmas(jax.random.key(0), "2")


# --- first-frame conditioning -------------------------------------------------------------------------------

def test_first_frame_mask_by_hand():
  np.testing.assert_array_equal(first_frame_mask(2, 4), [[0, 1, 1, 1], [0, 1, 1, 1]])
  np.testing.assert_array_equal(first_frame_mask(1, 4, num_fixed=3), [[0, 0, 0, 1]])
  np.testing.assert_array_equal(first_frame_mask(1, 3, num_fixed=0), [[1, 1, 1]])
  mixed = first_frame_mask(3, 4, num_fixed=np.array([0, 1, 2]))
  np.testing.assert_array_equal(mixed, [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
  assert mixed.dtype == jnp.float32
  traced = jax.jit(lambda k: first_frame_mask(3, 4, num_fixed=k))(jnp.array([0, 1, 2]))
  np.testing.assert_array_equal(traced, mixed)


def test_per_token_sigmas_zero_exactly_on_frame0_tokens_in_wan_layout():
  b, f, h, w, patch = 2, 3, 4, 6, 2
  tokens_per_frame = (h // patch) * (w // patch)
  sigma = np.array([0.37, 0.81], np.float32)
  mask = first_frame_mask(b, f)
  got = np.asarray(per_token_sigmas(sigma, mask, tokens_per_frame))
  assert got.shape == (b, f * tokens_per_frame) and got.dtype == np.float32
  assert np.all(got[:, :tokens_per_frame] == 0.0)
  np.testing.assert_array_equal(got[:, tokens_per_frame:], np.broadcast_to(sigma[:, None], (b, (f - 1) * 6)))
  # Wan TI2V: the latent-grid mask [F, H, W] subsampled by the patch, times t, flattened (f, h, w)
  grid_mask = np.broadcast_to(np.asarray(mask)[:, :, None, None], (b, f, h, w))
  wan = (grid_mask[:, :, ::patch, ::patch] * sigma[:, None, None, None]).reshape(b, -1)
  np.testing.assert_array_equal(got, wan)


def test_apply_fixed_frames():
  x, z0, _ = random_latents(12)
  mask = first_frame_mask(B, F, num_fixed=np.array([1, 2, 0]))
  out = np.asarray(apply_fixed_frames(x, z0, mask))
  for i, k in enumerate([1, 2, 0]):
    np.testing.assert_array_equal(out[i, :k], z0[i, :k])
    np.testing.assert_array_equal(out[i, k:], x[i, k:])


# --- text drop schedule and condition dropout ---------------------------------------------------------------

def test_text_drop_schedule_endpoints_exact():
  assert float(text_drop_prob(0, ramp_steps=1000)) == 1.0
  assert float(text_drop_prob(1000, ramp_steps=1000)) == 0.5
  assert float(text_drop_prob(10**7, ramp_steps=1000)) == 0.5
  assert float(text_drop_prob(250, ramp_steps=1000)) == pytest.approx(0.875, abs=1e-7)
  assert float(text_drop_prob(3, 0.1, 0.7, ramp_steps=3)) == np.float32(0.7)
  assert float(text_drop_prob(0, 0.1, 0.7, ramp_steps=3)) == np.float32(0.1)


def test_text_drop_schedule_with_traced_step():
  steps = jnp.arange(0, 21, dtype=jnp.int32)
  got = np.asarray(jax.jit(jax.vmap(lambda s: text_drop_prob(s, ramp_steps=10)))(steps))
  expected = np.where(np.arange(21) >= 10, 0.5, 1.0 - 0.05 * np.arange(21))
  assert_close(got, expected)
  assert got[0] == 1.0 and np.all(got[10:] == 0.5) and np.all(np.diff(got[:11]) < 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(step=0, ramp_steps=0), "ramp_steps"), (dict(step=0, ramp_steps=2.5), "ramp_steps"),
    (dict(step=0, start=1.5, ramp_steps=10), "start"), (dict(step=0, end=-0.1, ramp_steps=10), "end"),
    (dict(step=-1, ramp_steps=10), "step")])
def test_text_drop_schedule_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    text_drop_prob(**kwargs)


def test_drop_condition_frequency_and_whole_rows():
  n, l, d = 20_000, 3, 2
  cond = np.random.default_rng(13).normal(size=(n, l, d)).astype(np.float32) + 5.0
  null = np.full((l, d), -1.0, np.float32)
  new, dropped = drop_condition(jax.random.key(4), cond, null, 0.3)
  new, dropped = np.asarray(new), np.asarray(dropped)
  assert dropped.shape == (n,) and dropped.dtype == bool
  assert abs(dropped.mean() - 0.3) < 0.015  # standard error 3.2e-3
  np.testing.assert_array_equal(new[dropped], np.broadcast_to(null, (int(dropped.sum()), l, d)))
  np.testing.assert_array_equal(new[~dropped], cond[~dropped])


def test_drop_condition_extremes_traced_prob_and_int_cond():
  cond = np.arange(12, dtype=np.int32).reshape(4, 3)
  kept, none = drop_condition(jax.random.key(5), cond, 0, 0.0)
  np.testing.assert_array_equal(kept, cond)
  assert not np.asarray(none).any()
  gone, everything = drop_condition(jax.random.key(5), cond, 0, 1.0)
  np.testing.assert_array_equal(gone, 0)
  assert np.asarray(everything).all() and gone.dtype == jnp.int32
  at_step_0 = jax.jit(lambda k, s: drop_condition(k, cond, -1, text_drop_prob(s, ramp_steps=100)))
  new, dropped = at_step_0(jax.random.key(6), jnp.int32(0))
  np.testing.assert_array_equal(new, -1)
  assert np.asarray(dropped).all()


def test_drop_condition_errors():
  cond = np.zeros((4, 3, 2), np.float32)
  with pytest.raises(ValueError, match="null_cond"):
    drop_condition(jax.random.key(0), cond, np.zeros((3, 3)), 0.5)
  with pytest.raises(ValueError, match="prob"):
    drop_condition(jax.random.key(0), cond, 0.0, 1.5)
  with pytest.raises(ValueError, match="prob"):
    drop_condition(jax.random.key(0), cond, 0.0, np.array([0.5, 0.5]))
  with pytest.raises(ValueError, match="cond"):
    drop_condition(jax.random.key(0), np.float32(1.0), 0.0, 0.5)


# --- argument errors ----------------------------------------------------------------------------------------

def test_shape_errors():
  pred, x0, noise = random_latents(14)
  with pytest.raises(ValueError, match="pred_velocity"):
    flow_matching_loss(pred[0], x0, noise)
  with pytest.raises(ValueError, match="noise"):
    flow_matching_loss(pred, x0, noise[:, :2])
  with pytest.raises(ValueError, match="x0"):
    flow_matching_loss(pred, x0.astype(np.int32), noise)
  with pytest.raises(ValueError, match="mask"):
    flow_matching_loss(pred, x0, noise, np.ones((B, F + 1)))
  with pytest.raises(ValueError, match="mask"):
    flow_matching_loss(pred, x0, noise, np.ones((F,)))
  with pytest.raises(ValueError, match="sigma"):
    interpolate(x0, noise, np.ones((B, H), np.float32))
  with pytest.raises(ValueError, match="sigma"):
    x0_from_velocity(x0, noise, 0.5)
  with pytest.raises(ValueError, match="x0"):
    interpolate(x0.reshape(B, F, H * W, C), noise.reshape(B, F, H * W, C), np.ones(B, np.float32))
  with pytest.raises(ValueError, match="frame_mask"):
    apply_fixed_frames(x0, noise, np.ones((B, F + 1)))
  with pytest.raises(ValueError, match="fixed_latents"):
    apply_fixed_frames(x0, noise[:1], np.ones((B, F)))


def test_conditioning_argument_errors():
  with pytest.raises(ValueError, match="num_fixed"):
    first_frame_mask(2, 4, num_fixed=4)
  with pytest.raises(ValueError, match="num_fixed"):
    first_frame_mask(2, 4, num_fixed=-1)
  with pytest.raises(ValueError, match="num_fixed"):
    first_frame_mask(2, 4, num_fixed=np.array([0, 5]))
  with pytest.raises(ValueError, match="num_fixed"):
    first_frame_mask(2, 4, num_fixed=np.array([0, 1, 1]))
  with pytest.raises(ValueError, match="num_latent_frames"):
    first_frame_mask(2, 0)
  with pytest.raises(ValueError, match="tokens_per_frame"):
    per_token_sigmas(np.ones(2, np.float32), first_frame_mask(2, 3), 0)
  with pytest.raises(ValueError, match="sigma"):
    per_token_sigmas(np.ones((2, 3), np.float32), first_frame_mask(2, 3), 4)
  with pytest.raises(ValueError, match="frame_mask"):
    per_frame_sigmas(np.ones(2, np.float32), np.ones(2))
  with pytest.raises(ValueError, match="shift"):
    shift_sigmas(np.float32(0.5), -2.0)
