"""Parity of the JAX Wan DiT with diffusers' WanTransformer3DModel on tiny random checkpoints (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_WAN_CONFIGS
from diffusers import WanTransformer3DModel

from planx_jax import dit

# (frames, height, width) of the latents: odd token grids, one and several frames.
SHAPES = {"h3_d12": (3, 6, 10), "h2_d18_patch2": (4, 10, 6), "h4_d8_out5_nonorm": (1, 14, 6)}


def _inputs(config, shape, seed, per_token):
  rng = np.random.RandomState(seed)
  f, h, w = shape
  latents = rng.randn(2, f, h, w, config.in_channels).astype(np.float32)
  tokens = (f // config.patch_size[0]) * (h // config.patch_size[1]) * (w // config.patch_size[2])
  timestep = (rng.rand(2, tokens) if per_token else rng.rand(2)).astype(np.float32) * 1000
  if per_token:
    timestep[:, : tokens // (f // config.patch_size[0])] = 0.0  # TI2V: frame-0 tokens at t = 0
  text = rng.randn(2, 9, config.text_dim).astype(np.float32)
  return latents, timestep, text


def _diffusers(model, latents, timestep, text):
  with torch.no_grad():
    out = model(torch.tensor(latents.transpose(0, 4, 1, 2, 3)), torch.tensor(timestep), torch.tensor(text)).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("per_token", [False, True], ids=["scalar_t", "per_token_t"])
@pytest.mark.parametrize("name", sorted(TINY_WAN_CONFIGS))
def test_velocity_matches_diffusers(name, per_token, wan_dit_dir):
  path = wan_dit_dir(name)
  config, params = dit.load_diffusers(path)
  latents, timestep, text = _inputs(config, SHAPES[name], seed=len(name), per_token=per_token)
  expected = _diffusers(WanTransformer3DModel.from_pretrained(path).eval(), latents, timestep, text)
  got = jax.jit(dit.DiT(config).apply)({"params": params}, jnp.asarray(latents), jnp.asarray(timestep),
                                       jnp.asarray(text))
  assert got.shape == latents.shape[:4] + (config.out_channels,)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_unrolled_blocks_match_scanned(wan_dit_dir):
  path = wan_dit_dir("h3_d12")
  config, params = dit.load_diffusers(path)
  unrolled_config, unrolled = dit.load_diffusers(path, scan_layers=False)
  assert "blocks_1" in unrolled and "blocks" not in unrolled
  latents, timestep, text = (jnp.asarray(a) for a in _inputs(config, SHAPES["h3_d12"], 3, per_token=True))
  a = dit.DiT(config).apply({"params": params}, latents, timestep, text)
  b = dit.DiT(unrolled_config).apply({"params": unrolled}, latents, timestep, text)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_param_count_of_the_5b_preset_equals_diffusers():
  from planx_jax.convert.wan_dit import config_to_diffusers

  config = dit.DiTConfig.wan2_2_ti2v_5b()
  with torch.device("meta"):
    reference = WanTransformer3DModel(**{k: v for k, v in config_to_diffusers(config).items()
                                         if not k.startswith("_")})
  assert dit.param_count(config) == sum(p.numel() for p in reference.parameters()) == 4_999_787_712


def test_bfloat16_compute_stays_close(wan_dit_dir):
  config, params = dit.load_diffusers(wan_dit_dir("h3_d12"))
  latents, timestep, text = (jnp.asarray(a) for a in _inputs(config, SHAPES["h3_d12"], 4, per_token=False))
  fp32 = dit.DiT(config).apply({"params": params}, latents, timestep, text)
  bf16 = dit.DiT(config.replace(dtype="bfloat16")).apply({"params": params}, latents, timestep, text)
  assert bf16.dtype == jnp.bfloat16
  err = float(jnp.mean(jnp.abs(bf16.astype(jnp.float32) - fp32)))
  assert err < 0.02 * float(jnp.mean(jnp.abs(fp32))), err


@pytest.mark.parametrize("kwargs, message", [
    (dict(latents=np.zeros((1, 2, 6, 10, 5), np.float32)), "latents have 5 channels, the DiT expects in_channels=6"),
    (dict(latents=np.zeros((1, 2, 7, 10, 6), np.float32)), "latent height 7 is not divisible by the patch size 2"),
    (dict(latents=np.zeros((2, 6, 10, 6), np.float32)), r"latents must be \[B, F, H, W, C\]"),
    (dict(text=np.zeros((1, 4, 19), np.float32)), r"text_emb must be \[B=1, T, text_dim=20\]"),
    (dict(timestep=np.zeros((1, 5), np.float32)), r"timestep must be \[B\]=1 or per token \[B, L\]=\[1, 30\]"),
    (dict(semantic=np.zeros((1, 3, 8), np.float32)), "no semantic branch"),
])
def test_bad_input_is_named(kwargs, message, wan_dit_dir):
  config, params = dit.load_diffusers(wan_dit_dir("h3_d12"))
  inputs = dict(latents=np.zeros((1, 2, 6, 10, 6), np.float32), timestep=np.zeros((1,), np.float32),
                text=np.zeros((1, 4, 20), np.float32))
  semantic = kwargs.pop("semantic", None)
  inputs.update(kwargs)
  extra = {} if semantic is None else dict(semantic=semantic, semantic_positions=np.zeros((1, 3, 3), np.float32))
  with pytest.raises(ValueError, match=message):
    dit.DiT(config).apply({"params": params}, inputs["latents"], inputs["timestep"], inputs["text"], **extra)


def test_random_init_is_original_wans():
  """`init_params` initialises as original Wan's `init_weights` (what a DiT trained from scratch starts from):
  Xavier-uniform kernels over the torch layer's fan-in / fan-out (Conv3d flattened), N(0, 0.02) in the text and
  time embedding MLPs, a zero head, zero biases."""
  config = dit.DiTConfig.tiny().replace(in_channels=16, out_channels=16, text_dim=32, num_heads=4, head_dim=16,
                                        ffn_dim=128, num_layers=2, freq_dim=64)
  params = jax.tree.map(np.asarray, jax.jit(lambda k: dit.init_params(config, k))(jax.random.key(0)))
  dim, c = config.dim, config.in_channels
  xavier = {  # kernel -> (fan_in, fan_out) of the torch layer
      ("patch_embedding",): (c * 4, dim), ("time_projection",): (dim, 6 * dim),
      ("blocks", "ffn_1"): (dim, config.ffn_dim), ("blocks", "ffn_2"): (config.ffn_dim, dim),
      **{("blocks", attn, name): (dim, dim) for attn in ("self_attn", "cross_attn") for name in "qkvo"}}
  for path, (fan_in, fan_out) in xavier.items():
    node = params
    for key in path:
      node = node[key]
    kernel = node["kernel"]
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound, path
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05, err_msg=str(path))
    assert not np.any(node["bias"]), path
  for mlp in ("text_embedding", "time_embedding"):
    for layer in ("linear_1", "linear_2"):
      np.testing.assert_allclose(params[mlp][layer]["kernel"].std(), 0.02, rtol=0.06, err_msg=f"{mlp}.{layer}")
  assert not np.any(params["head"]["kernel"]) and not np.any(params["head"]["bias"])
  # The stand-in for a pretrained base differs only in its head, drawn N(0, 0.02) so conditions reach the output.
  stand_in = jax.tree.map(np.asarray, jax.jit(lambda k: dit.init_base_stand_in(config, k))(jax.random.key(0)))
  np.testing.assert_allclose(stand_in["head"]["kernel"].std(), 0.02, rtol=0.1)
  k_init = jax.random.split(jax.random.key(0))[0]
  same_key = jax.tree.map(np.asarray, jax.jit(lambda k: dit.init_params(config, k))(k_init))
  rest = lambda p: {k: v for k, v in p.items() if k != "head"}
  jax.tree.map(np.testing.assert_array_equal, rest(stand_in), rest(same_key))
  np.testing.assert_array_equal(stand_in["head"]["bias"], same_key["head"]["bias"])
