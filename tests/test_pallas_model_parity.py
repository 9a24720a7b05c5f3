"""The models' reference parity with attention_impl set to the Pallas kernel (interpret mode on CPU): the planner
against transformers' Qwen2, the Wan DiT against diffusers (and its semantic branch against the XLA path), and
TA-Tok's codes against its torch reference (in tests/test_tatok.py, next to that fixture)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_QWEN2_CONFIGS

from planx_jax import dit, planner

IMPL = "pallas_interpret"


@pytest.mark.parametrize("name", sorted(TINY_QWEN2_CONFIGS))
def test_planner_logits_match_transformers(name, hf_qwen2_dir):
  """GQA ratios 1, 2, 7 and head_dim 10; causal with half-split RoPE fused in the kernel."""
  import transformers

  path = hf_qwen2_dir(name)
  config, params = planner.load_hf(path)
  config = config.replace(attention_impl=IMPL)
  ids = np.random.RandomState(1).randint(0, config.vocab_size, (2, 37))
  with torch.no_grad():
    expected = transformers.Qwen2ForCausalLM.from_pretrained(path).eval()(torch.tensor(ids)).logits.numpy()
  got = jax.jit(planner.Planner(config).apply)({"params": params}, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_planner_packed_segments_and_cached_prefill_match_xla(hf_qwen2_dir):
  """Segment ids (packing) and the KV-cache path (query offset, cache segment ids) agree with the XLA path."""
  config, params = planner.load_hf(hf_qwen2_dir("untied_gqa2"))
  rng = np.random.RandomState(3)
  ids = jnp.asarray(rng.randint(0, config.vocab_size, (1, 22)))
  segments = jnp.asarray([[1] * 13 + [2] * 9])
  positions = jnp.asarray([list(range(13)) + list(range(9))])
  outs = {}
  for impl in ("xla", IMPL):
    model = planner.Planner(config.replace(attention_impl=impl))
    packed = model.apply({"params": params}, ids, positions, segments)
    cache = planner.init_cache(config, 1, 32)
    first = model.apply({"params": params}, ids[:, :10], cache=cache, method="forward")
    second = model.apply({"params": params}, ids[:, 10:], cache=first.cache, method="forward")
    outs[impl] = (packed, first.logits, second.logits)
  for got, expected in zip(outs[IMPL], outs["xla"]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=0)


def _dit_inputs(config, shape, seed):
  rng = np.random.RandomState(seed)
  latents = rng.randn(2, *shape, config.in_channels).astype(np.float32)
  timestep = (rng.rand(2) * 1000).astype(np.float32)
  text = rng.randn(2, 9, config.text_dim).astype(np.float32)
  return latents, timestep, text


@pytest.mark.parametrize("name,shape", [("h3_d12", (3, 6, 10)), ("h2_d18_patch2", (4, 10, 6))])
def test_dit_velocity_matches_diffusers(name, shape, wan_dit_dir):
  """Self-attention with interleaved 3D RoPE fused in the kernel, text cross-attention through it too."""
  from diffusers import WanTransformer3DModel

  path = wan_dit_dir(name)
  config, params = dit.load_diffusers(path)
  config = config.replace(attention_impl=IMPL)
  latents, timestep, text = _dit_inputs(config, shape, seed=len(name))
  with torch.no_grad():
    expected = WanTransformer3DModel.from_pretrained(path).eval()(
        torch.tensor(latents.transpose(0, 4, 1, 2, 3)), torch.tensor(timestep), torch.tensor(text)).sample
  got = jax.jit(dit.DiT(config).apply)({"params": params}, jnp.asarray(latents), jnp.asarray(timestep),
                                       jnp.asarray(text))
  np.testing.assert_allclose(np.asarray(got), expected.numpy().transpose(0, 2, 3, 4, 1), atol=1e-4, rtol=0)


def test_dit_semantic_branch_matches_xla(wan_dit_dir):
  """Plan-X split cross-attention in the kernel (rotated semantic segment, padding mask) equals the XLA path."""
  config, params = dit.add_semantic_branch(*dit.load_diffusers(wan_dit_dir("h3_d12")), 10, rng=jax.random.key(1))
  rng = np.random.RandomState(4)
  latents, timestep, text = (jnp.asarray(a) for a in _dit_inputs(config, (3, 6, 10), seed=4))
  semantic = jnp.asarray(rng.randn(2, 7, 10), jnp.float32)
  positions = jnp.asarray(rng.rand(2, 7, 3) * [2, 2, 4], jnp.float32)
  mask = jnp.asarray([[True] * 7, [True] * 4 + [False] * 3])
  outs = [dit.DiT(config.replace(attention_impl=impl)).apply({"params": params}, latents, timestep, text, semantic,
                                                               positions, mask) for impl in ("xla", IMPL)]
  np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(outs[0]), atol=1e-5, rtol=0)
