"""Parity of the JAX planner with transformers' Qwen2ForCausalLM on tiny random checkpoints (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_QWEN2_CONFIGS, build_hf_qwen2

from planx_jax import planner
from planx_jax.convert import qwen2
from planx_jax.convert.table import ref_keys, set_path


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize("name", sorted(TINY_QWEN2_CONFIGS))
def test_logits_match_transformers(name, scan_layers, hf_qwen2_dir):
  path = hf_qwen2_dir(name)
  config, params = planner.load_hf(path, scan_layers=scan_layers)
  assert ("layers" in params) == scan_layers and ("layers_0" in params) != scan_layers
  assert config.tie_word_embeddings == TINY_QWEN2_CONFIGS[name]["tie_word_embeddings"]
  ids = np.random.RandomState(1).randint(0, config.vocab_size, (3, 41))
  import transformers

  reference = transformers.Qwen2ForCausalLM.from_pretrained(path).eval()
  expected = hf_logits(reference, ids)
  got = np.asarray(jax.jit(planner.Planner(config).apply)({"params": params}, jnp.asarray(ids)))
  assert got.dtype == np.float32 and got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_longer_sequence_and_rope_theta():
  """Positions up to 300 with Qwen's theta 1e6 (RoPE angles and their fp32 tables)."""
  model = build_hf_qwen2(seed=5, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, rope_theta=1e6)
  config = qwen2.config_from_hf(model.config.to_dict())
  assert config.rope_theta == 1e6
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = _params_from_state(config, state)
  ids = np.random.RandomState(2).randint(0, config.vocab_size, (1, 300))
  got = np.asarray(planner.Planner(config).apply({"params": params}, jnp.asarray(ids)))
  np.testing.assert_allclose(got, hf_logits(model, ids), atol=1e-4, rtol=0)


def test_segment_ids_isolate_packed_sequences(hf_qwen2_dir):
  """Two sequences packed in one row with segment ids give each one's own logits."""
  config, params = planner.load_hf(hf_qwen2_dir("untied_gqa2"))
  rng = np.random.RandomState(3)
  a, b = rng.randint(0, config.vocab_size, 13), rng.randint(0, config.vocab_size, 9)
  model = planner.Planner(config)
  packed = np.concatenate([a, b])[None]
  segments = np.array([[1] * 13 + [2] * 9])
  positions = np.array([list(range(13)) + list(range(9))])
  got = np.asarray(model.apply({"params": params}, jnp.asarray(packed), jnp.asarray(positions),
                               jnp.asarray(segments)))
  alone_a = np.asarray(model.apply({"params": params}, jnp.asarray(a[None])))
  alone_b = np.asarray(model.apply({"params": params}, jnp.asarray(b[None])))
  np.testing.assert_allclose(got[:, :13], alone_a, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got[:, 13:], alone_b, atol=1e-5, rtol=0)


def test_bfloat16_compute_no_worse_than_transformers_bf16(hf_qwen2_dir):
  """bf16 compute (fp32 norms/RoPE/softmax, fp32 logits) errs from fp32 no more than HF's own bf16 model."""
  import transformers

  path = hf_qwen2_dir("tied_mha")
  config, params = planner.load_hf(path)
  ids = np.random.RandomState(4).randint(0, config.vocab_size, (2, 33))
  fp32 = hf_logits(transformers.Qwen2ForCausalLM.from_pretrained(path).eval(), ids)
  hf_bf16 = hf_logits(transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval(), ids)
  ours = planner.Planner(config.replace(dtype="bfloat16")).apply({"params": params}, jnp.asarray(ids))
  assert ours.dtype == jnp.float32
  ours_err = float(np.abs(np.asarray(ours) - fp32).mean())
  hf_err = float(np.abs(hf_bf16 - fp32).mean())
  assert 0 < ours_err <= 1.5 * hf_err, (ours_err, hf_err)


def _params_from_state(config, state):
  """planx params straight from a torch state dict, through the converter's table."""
  params = {}
  for rule in qwen2.param_table(config):
    arrays = [rule.to_planx(state[key]) for key in ref_keys(rule, config.num_layers)]
    set_path(params, rule.path, np.stack(arrays) if rule.per_layer else arrays[0])
  return params
