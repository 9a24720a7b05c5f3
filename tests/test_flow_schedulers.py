"""Flow samplers against diffusers 0.42: sigma grids, single Euler / UniPC steps, full guided and first-frame
conditioned runs with a fixed random model written twice (torch and JAX), the progress callback, bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from planx_jax.sampling.flow_sampler import sample_flow
from planx_jax.sampling.flow_schedulers import (
    euler_sigmas,
    euler_step,
    unipc_coefficients,
    unipc_init,
    unipc_sigmas,
    unipc_step,
)

GRIDS = [(50, 5.0), (10, 3.0), (1, 1.0), (2, 5.0), (7, 0.5), (25, 7.3)]
SHAPE = (2, 3, 4, 4, 4)  # [B, F, H, W, C]


def diffusers_unipc(shift):
  """The scheduler of the Wan2.2 TI2V-5B diffusers repo (its non-default settings, and the defaults Wan relies on)."""
  return UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                                 solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                                 final_sigmas_type="zero")


def diffusers_scheduler(solver, num_steps, shift):
  scheduler = diffusers_unipc(shift) if solver == "unipc" else FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(num_steps)
  return scheduler


# --- Grids -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_steps,shift", GRIDS)
def test_unipc_grid_matches_diffusers(num_steps, shift):
  sigmas, timesteps = unipc_sigmas(num_steps, shift)
  ref = diffusers_scheduler("unipc", num_steps, shift)
  assert sigmas.dtype == np.float32 and sigmas.shape == (num_steps + 1,) and sigmas[-1] == 0
  np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)
  assert sigmas[0] < 1  # the -1e-6 adjustment keeps log(1 - s) finite
  assert timesteps.dtype == np.int64
  np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("num_steps,shift", GRIDS)
def test_euler_grid_matches_diffusers(num_steps, shift):
  sigmas, timesteps = euler_sigmas(num_steps, shift)
  ref = diffusers_scheduler("euler", num_steps, shift)
  assert sigmas.dtype == np.float32 and sigmas.shape == (num_steps + 1,) and sigmas[-1] == 0
  np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)
  assert timesteps.dtype == np.float32
  np.testing.assert_allclose(timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=0)


def test_grids_follow_the_shift_map():
  """Independent of diffusers: UniPC is linspace(1, 1/1000, N+1)[:-1] shifted; Euler's sigma_min is shifted twice."""
  shift = 5.0
  warp = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
  sigmas, timesteps = unipc_sigmas(4, shift)
  expected = warp(np.array([1.0, 0.75025, 0.5005, 0.25075]))
  expected[0] -= 1e-6
  np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-6)
  np.testing.assert_array_equal(timesteps, np.floor(expected * 1000).astype(np.int64))
  sigmas, _ = euler_sigmas(3, shift)
  np.testing.assert_allclose(sigmas, [1.0, warp((1 + warp(0.001)) / 2), warp(warp(0.001)), 0.0], rtol=1e-6)


# --- Single steps ----------------------------------------------------------------------------------------------

def test_euler_steps_match_diffusers():
  num_steps, shift = 10, 3.0
  sigmas, _ = euler_sigmas(num_steps, shift)
  ref = diffusers_scheduler("euler", num_steps, shift)
  rng = np.random.default_rng(0)
  for i, t in enumerate(ref.timesteps):
    x, v = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    expected = ref.step(torch.from_numpy(v), t, torch.from_numpy(x)).prev_sample.numpy()
    got = jax.jit(euler_step)(x, v, sigmas[i], sigmas[i + 1])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_steps,shift,start", [(10, 3.0, 0), (50, 5.0, 0), (2, 5.0, 0), (1, 1.0, 0), (10, 5.0, 3)])
def test_unipc_steps_match_diffusers(num_steps, shift, start):
  """Each step fed the same sample and random velocity: warm-up order 1, then order 2 with the corrector, a
  lower-order last step; start > 0 begins mid-schedule (diffusers finds the index from the timestep)."""
  sigmas, _ = unipc_sigmas(num_steps, shift)
  coeffs = unipc_coefficients(sigmas)
  ref = diffusers_scheduler("unipc", num_steps, shift)
  rng = np.random.default_rng(num_steps)
  sample = rng.standard_normal(SHAPE).astype(np.float32)
  state = unipc_init(sample, start_step=start)
  step = jax.jit(unipc_step)
  orders = []
  for i in range(start, num_steps):
    v = rng.standard_normal(SHAPE).astype(np.float32)
    expected = ref.step(torch.from_numpy(v), ref.timesteps[i], torch.from_numpy(sample)).prev_sample.numpy()
    got, state = step(state, v, sample, coeffs)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6, err_msg=f"step {i}")
    assert int(state.last_order) == ref.this_order and int(state.step) == i + 1
    orders.append(ref.this_order)
    sample = expected
  n = num_steps - start
  assert orders == ([1] if n == 1 else [1] + [2] * (n - 2) + [1])


# --- Full runs -------------------------------------------------------------------------------------------------

def _model_params():
  rng = np.random.default_rng(7)
  c = SHAPE[-1]
  return dict(mix=(0.4 * rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32),
              time=rng.standard_normal(c).astype(np.float32),
              cond=rng.standard_normal((SHAPE[0], c)).astype(np.float32),
              uncond=rng.standard_normal((SHAPE[0], c)).astype(np.float32))


def _timestep_column(t, ndim):
  """[B] or [B, F] timesteps -> broadcastable against [B, F, H, W, C]."""
  return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def jax_model(mix):
  """v = x W + mean_f(x) / 2 + (t / 1000) a + c: a fixed linear map of the latents (mixing channels and frames)
  plus the timestep and the condition."""
  def velocity_fn(x, t, cond):
    time = _timestep_column(t / 1000.0, 5)
    return (jnp.einsum("bfhwc,cd->bfhwd", x, mix) + 0.5 * jnp.mean(x, axis=1, keepdims=True) + time * cond["time"]
            + cond["offset"][:, None, None, None, :])
  return velocity_fn


def torch_model(x, t, cond, mix):
  time = _timestep_column(t.to(torch.float32) / 1000.0, 5)
  return (torch.einsum("bfhwc,cd->bfhwd", x, mix) + 0.5 * torch.mean(x, dim=1, keepdim=True) + time * cond["time"]
          + cond["offset"][:, None, None, None, :])


def diffusers_loop(solver, num_steps, shift, noise, cond, uncond, guidance_scale, fixed, mix):
  """The denoising loop of diffusers' WanPipeline / WanImageToVideoPipeline (expand_timesteps, as for TI2V-5B):
  the scheduler steps the raw latents, the model sees (1 - m) z0 + m x with timesteps m t, the output is blended."""
  scheduler = diffusers_scheduler(solver, num_steps, shift)
  latents = torch.from_numpy(noise)
  mask = torch.ones(noise.shape[:2])  # [B, F]
  if fixed is not None:
    mask[:, 0] = 0
    fixed = torch.from_numpy(fixed)
  m = mask[..., None, None, None]  # [B, F, 1, 1, 1]

  def blend(x):
    return x if fixed is None else (1 - m) * fixed + m * x

  for t in scheduler.timesteps:
    timestep = t.expand(noise.shape[0]) if fixed is None else mask * t
    model_input = blend(latents)
    v = torch_model(model_input, timestep, cond, mix)
    if uncond is not None and guidance_scale > 1:
      v_uncond = torch_model(model_input, timestep, uncond, mix)
      v = v_uncond + guidance_scale * (v - v_uncond)
    latents = scheduler.step(v, t, latents).prev_sample
  return blend(latents).numpy(), scheduler.timesteps.numpy()


@pytest.mark.parametrize("solver", ["unipc", "euler"])
@pytest.mark.parametrize("guided,fixed", [(False, False), (True, False), (True, True)])
def test_full_run_matches_diffusers_loop(solver, guided, fixed):
  num_steps, shift, scale = 10, 5.0, 5.0
  p = _model_params()
  rng = np.random.default_rng(1)
  noise = rng.standard_normal(SHAPE).astype(np.float32)
  z0 = rng.standard_normal(SHAPE).astype(np.float32) if fixed else None
  cond = {"time": p["time"], "offset": p["cond"]}
  uncond = {"time": p["time"], "offset": p["uncond"]} if guided else None

  seen = []  # (timesteps, offset) per model call, in call order
  model = jax_model(p["mix"])

  def velocity_fn(x, t, c):
    jax.debug.callback(ordered=True)(lambda tt, off: seen.append((np.asarray(tt), np.asarray(off))), t, c["offset"])
    return model(x, t, c)

  run = jax.jit(lambda n, c, u, z: sample_flow(velocity_fn, n, cond=c, uncond=u, num_steps=num_steps, shift=shift,
                                               solver=solver, guidance_scale=scale, fixed_latents=z))
  got = np.asarray(run(noise, cond, uncond, z0))
  jax.effects_barrier()

  torch_cond = {k: torch.from_numpy(v) for k, v in cond.items()}
  torch_uncond = None if uncond is None else {k: torch.from_numpy(v) for k, v in uncond.items()}
  expected, ref_timesteps = diffusers_loop(solver, num_steps, shift, noise, torch_cond, torch_uncond, scale, z0,
                                           torch.from_numpy(p["mix"]))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  assert np.abs(got - noise).max() > 0.1  # the run moved the latents

  calls = 2 if guided else 1
  assert len(seen) == calls * num_steps
  for k, (t, offset) in enumerate(seen):
    np.testing.assert_array_equal(offset, p["cond"] if k % calls == 0 else p["uncond"])
    want = np.float32(ref_timesteps[k // calls])
    if fixed:
      assert t.shape == SHAPE[:2] and t.dtype == np.float32
      assert np.all(t[:, 0] == 0) and np.all(t[:, 1:] == want)
    else:
      assert t.shape == SHAPE[:1] and np.all(t == want)
  if fixed:
    np.testing.assert_array_equal(got[:, 0], z0[:, 0])


def test_frame_mask_mixes_t2v_and_ti2v_rows():
  """Row 0 keeps frame 0 at z0, row 1 (all ones) is plain text-to-video: it matches a run without fixed latents."""
  p = _model_params()
  rng = np.random.default_rng(2)
  noise, z0 = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
  cond = {"time": p["time"], "offset": p["cond"]}
  mask = np.ones(SHAPE[:2], np.float32)
  mask[0, 0] = 0
  run = lambda **kw: np.asarray(sample_flow(jax_model(p["mix"]), noise, cond=cond, num_steps=4, **kw))  # noqa: E731
  mixed, free = run(fixed_latents=z0, frame_mask=mask), run()
  np.testing.assert_array_equal(mixed[0, 0], z0[0, 0])
  np.testing.assert_allclose(mixed[1], free[1], rtol=0, atol=1e-6)
  assert np.abs(mixed[0, 1:] - free[0, 1:]).max() > 1e-3  # the fixed frame conditions the others


def test_loop_is_traced_once():
  """One lax.fori_loop: the model is traced once per branch (cond, uncond) whatever the number of steps."""
  p = _model_params()
  traces = []
  model = jax_model(p["mix"])

  def velocity_fn(x, t, c):
    traces.append(1)
    return model(x, t, c)

  noise = jnp.zeros(SHAPE)
  cond = {"time": p["time"], "offset": p["cond"]}
  uncond = {"time": p["time"], "offset": p["uncond"]}
  jaxpr = jax.make_jaxpr(lambda n: sample_flow(velocity_fn, n, cond=cond, uncond=uncond, num_steps=30))(noise)
  assert len(traces) == 2
  loops = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name in ("scan", "while")]
  assert len(loops) == 1 and loops[0].params.get("length", 30) == 30
  traces.clear()
  sample_flow(velocity_fn, noise, cond=cond, uncond=uncond, guidance_scale=1.0, num_steps=3)
  assert len(traces) == 1  # w == 1: one model call per step


@pytest.mark.parametrize("ordered", [False, True])
def test_callback_fires_once_per_step_in_order(ordered):
  calls = []
  fn = lambda x, t, c: -x  # noqa: E731
  run = jax.jit(lambda n: sample_flow(fn, n, num_steps=7, solver="euler", callback=lambda i, n: calls.append((i, n)),
                                      ordered_callback=ordered))
  run(jnp.ones(SHAPE)).block_until_ready()
  jax.effects_barrier()
  assert calls == [(i, 7) for i in range(7)]
  assert all(type(i) is int for i, _ in calls)


# --- Errors ----------------------------------------------------------------------------------------------------

def _zero_model(x, t, c):
  return jnp.zeros_like(x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps must be an int >= 1"),
    (dict(num_steps=2.5), "num_steps must be an int >= 1"),
    (dict(num_steps=True), "num_steps must be an int >= 1"),
    (dict(shift=0.0), "shift must be a finite number > 0"),
    (dict(shift=float("nan")), "shift must be a finite number > 0"),
    (dict(solver="dpm++"), "solver must be one of"),
    (dict(solver="unipc", order=3), "implements order 2 only"),
    (dict(solver="euler", order=2), "implements order 1 only"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be a finite"),
    (dict(callback=3), "callback must be callable"),
    (dict(ordered_callback="yes"), "ordered_callback must be a bool"),
    (dict(fixed_latents=np.zeros((2, 3, 4, 4, 5), np.float32)), "fixed_latents must be float latents shaped like"),
    (dict(frame_mask=np.ones((2, 3), np.float32)), "frame_mask needs fixed_latents"),
    (dict(fixed_latents=np.zeros(SHAPE, np.float32), frame_mask=np.ones((2, 4), np.float32)), "frame_mask must be"),
    (dict(fixed_latents=np.zeros(SHAPE, np.float32), frame_mask=np.full((3,), 0.5, np.float32)), "hold 0"),
])
def test_bad_sampler_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sample_flow(_zero_model, np.zeros(SHAPE, np.float32), **kwargs)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"noise must be float latents \[B, F, H, W, C\]"):
    sample_flow(_zero_model, np.zeros(SHAPE[1:], np.float32))
  with pytest.raises(ValueError, match="velocity_fn must be callable"):
    sample_flow(None, np.zeros(SHAPE, np.float32))
  with pytest.raises(ValueError, match="needs >= 2 latent frames"):
    sample_flow(_zero_model, np.zeros((1, 1, 2, 2, 4), np.float32), fixed_latents=np.zeros((1, 1, 2, 2, 4)))
  with pytest.raises(ValueError, match=r"velocity_fn\(latents, timesteps, cond\) must return float velocities"):
    sample_flow(lambda x, t, c: x[..., :2], np.zeros(SHAPE, np.float32), num_steps=2)
  with pytest.raises(ValueError, match=r"velocity_fn\(latents, timesteps, uncond\)"):
    sample_flow(lambda x, t, c: x if c is None else x[:1], np.zeros(SHAPE, np.float32), uncond=1, num_steps=2)


def test_bad_scheduler_arguments_raise():
  for num_steps in (0, -3, 1.0):
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
      unipc_sigmas(num_steps, 5.0)
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
      euler_sigmas(num_steps, 5.0)
  with pytest.raises(ValueError, match="shift must be a finite number > 0"):
    euler_sigmas(10, -1.0)
  with pytest.raises(ValueError, match="only order 2"):
    unipc_init(np.zeros(SHAPE), order=3)
  with pytest.raises(ValueError, match="start_step must be an int >= 0"):
    unipc_init(np.zeros(SHAPE), start_step=-1)
  with pytest.raises(ValueError, match="decreasing flow grid"):
    unipc_coefficients(np.array([1.0, 0.5, 0.0], np.float32))  # s = 1 makes log(1 - s) infinite
  with pytest.raises(ValueError, match="decreasing flow grid"):
    unipc_coefficients(np.array([0.9, 0.5, 0.1], np.float32))  # no terminal 0
  sigmas, _ = unipc_sigmas(3, 5.0)
  state = unipc_init(np.zeros(SHAPE))
  with pytest.raises(ValueError, match="must have one shape"):
    unipc_step(state, np.zeros(SHAPE[1:]), np.zeros(SHAPE), unipc_coefficients(sigmas))
