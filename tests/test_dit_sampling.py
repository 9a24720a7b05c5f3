"""End to end denoising with the DiT: planx's sampler against diffusers' Wan transformer + UniPC scheduler driven
by hand the way diffusers' Wan2.2 TI2V pipeline does (CFG with a negative prompt, fixed first frame)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

from planx_jax import dit
from planx_jax.sampling.dit_sampling import per_token_timesteps, sample_latents


def _diffusers_ti2v(model, noise, z0, text, negative, steps, shift, guidance):
  """The TI2V loop of diffusers' WanPipeline (expand_timesteps): blend frame 0, per-token timesteps, CFG."""
  scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                      num_train_timesteps=1000, flow_shift=shift)
  scheduler.set_timesteps(steps)
  latents, z0 = torch.tensor(noise), torch.tensor(z0)
  mask = torch.ones_like(latents)
  mask[:, :, 0] = 0
  text, negative = torch.tensor(text), torch.tensor(negative)
  for t in scheduler.timesteps:
    model_input = (1 - mask) * z0 + mask * latents
    per_token = (mask[0][0][:, ::2, ::2] * t).flatten()[None].expand(latents.shape[0], -1)
    with torch.no_grad():
      cond = model(model_input, per_token, text).sample
      uncond = model(model_input, per_token, negative).sample
    latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
  return ((1 - mask) * z0 + mask * latents).numpy()


def test_ti2v_sampling_matches_diffusers(wan_dit_dir):
  path = wan_dit_dir("h3_d12")
  config, params = dit.load_diffusers(path)
  rng = np.random.RandomState(0)
  noise = rng.randn(1, config.in_channels, 3, 6, 4).astype(np.float32)  # [B, C, F, H, W]
  z0 = rng.randn(*noise.shape).astype(np.float32)
  text, negative = (rng.randn(1, 5, config.text_dim).astype(np.float32) for _ in range(2))
  expected = _diffusers_ti2v(WanTransformer3DModel.from_pretrained(path).eval(), noise, z0, text, negative,
                             steps=4, shift=5.0, guidance=5.0)
  to_last = lambda a: jnp.asarray(a.transpose(0, 2, 3, 4, 1))  # noqa: E731
  fixed = to_last(z0)
  got = jax.jit(lambda p, n, z, c, u: sample_latents(config, p, n, c, u, num_steps=4, shift=5.0, fixed_latents=z))(
      params, to_last(noise), fixed, jnp.asarray(text), jnp.asarray(negative))
  np.testing.assert_array_equal(np.asarray(got[:, 0]), np.asarray(fixed[:, 0]))
  np.testing.assert_allclose(np.asarray(got), expected.transpose(0, 2, 3, 4, 1), atol=1e-4, rtol=0)


def test_semantic_tokens_steer_only_the_conditional_branch(wan_dit_dir):
  config, params = dit.add_semantic_branch(*dit.load_diffusers(wan_dit_dir("h3_d12")), 8)
  rng = np.random.RandomState(1)
  noise = jnp.asarray(rng.randn(1, 2, 6, 4, config.in_channels), jnp.float32)
  text, negative = (jnp.asarray(rng.randn(1, 5, config.text_dim), jnp.float32) for _ in range(2))
  semantic = jnp.asarray(rng.randn(1, 4, 8), jnp.float32)
  positions = jnp.asarray(rng.rand(1, 4, 3) * 2, jnp.float32)
  run = lambda **kw: sample_latents(config, params, noise, text, negative, num_steps=2, solver="euler", **kw)  # noqa
  plain = run()
  steered = run(semantic=semantic, semantic_positions=positions)
  masked = run(semantic=semantic, semantic_positions=positions, semantic_mask=jnp.zeros((1, 4), bool))
  np.testing.assert_array_equal(np.asarray(masked), np.asarray(plain))
  assert float(jnp.max(jnp.abs(steered - plain))) > 1e-3


def test_per_frame_timesteps_expand_frame_major():
  config = dit.DiTConfig.tiny()
  per_frame = jnp.array([[0.0, 700.0, 700.0]])
  per_token = per_token_timesteps(config, per_frame, (1, 3, 4, 6, 8))
  np.testing.assert_array_equal(np.asarray(per_token), [[0.0] * 6 + [700.0] * 12])
  assert per_token_timesteps(config, jnp.array([3.0]), (1, 3, 4, 6, 8)).shape == (1,)
