"""Planner presets, parameter counts against HF's, logical axis names and config validation."""

import jax
import pytest
import torch
import transformers

from planx_jax import planner
from planx_jax.convert import qwen2
from planx_jax.plan_tokens import PlanTokens


@pytest.mark.parametrize("preset, expected", [
    ("qwen2_5_0_5b", 494_032_768),
    ("qwen2_5_1_5b", 1_543_714_304),
    ("qwen2_5_7b", 7_615_616_512),
])
def test_param_counts_equal_transformers(preset, expected):
  config = planner.PlannerConfig.preset(preset)
  assert planner.param_count(config) == expected
  with torch.device("meta"):
    reference = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**qwen2.config_to_hf(config)))
  assert sum(p.numel() for p in reference.parameters()) == expected


def test_extended_vocabulary_count():
  config = planner.PlannerConfig.qwen2_5_1_5b(vocab_size=PlanTokens().vocab_size)
  assert config.vocab_size == 217_206
  assert planner.param_count(config) == 1_543_714_304 + (217_206 - 151_936) * 1536


def test_logical_axes_cover_every_param():
  config = planner.PlannerConfig.tiny(tie_word_embeddings=False)
  axes = planner.param_logical_axes(config)
  shapes = planner.abstract_params(config)
  assert axes["layers"]["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "heads", "head_dim")
  assert axes["layers"]["attn"]["k"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "kv_heads",
                                                                             "head_dim")
  assert axes["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert axes["lm_head"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")
  for spec, shape in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                         jax.tree.leaves(shapes)):
    assert len(spec) == len(shape.shape)


def test_hf_config_round_trip():
  for preset in ("qwen2_5_0_5b", "qwen2_5_7b", "tiny"):
    config = planner.PlannerConfig.preset(preset)
    assert qwen2.config_from_hf(qwen2.config_to_hf(config)) == config


@pytest.mark.parametrize("overrides, message", [
    (dict(num_heads=6, num_kv_heads=4), r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(dtype="float8"), "unknown dtype 'float8'"),
    (dict(attention_impl="flash"), "unknown attention_impl 'flash'"),
    (dict(hidden_size=0), "hidden_size must be positive"),
    (dict(num_layer=2), "unknown PlannerConfig config key 'num_layer'.*did you mean 'num_layers'"),
])
def test_bad_config_is_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    planner.PlannerConfig.tiny(**overrides)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown PlannerConfig preset 'qwen3'; available: qwen2_5_0_5b, qwen2_5_1_5b, qwen2_5_7b, tiny"):
    planner.PlannerConfig.preset("qwen3")
