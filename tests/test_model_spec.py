"""The model spec behind the five public APIs: the same entry points everywhere, one load return type (Loaded),
logical axes shaped like the params, and checkpoints of every component that round-trip."""

import jax
import numpy as np
import pytest

from planx_jax import dit, planner, t5, tatok, vae
from planx_jax.model_spec import Loaded, ModelSpec

FACADES = {"dit": (dit, dit.DiTConfig.tiny), "planner": (planner, planner.PlannerConfig.tiny),
           "t5": (t5, t5.T5Config.tiny), "vae": (vae, vae.VAEConfig.tiny), "tatok": (tatok, tatok.TATokConfig.tiny)}
ENTRY_POINTS = ("init_params", "abstract_params", "param_count", "save_checkpoint", "load_checkpoint")


@pytest.mark.parametrize("kind", sorted(FACADES))
def test_every_facade_exposes_the_spec_entry_points(kind):
  module, _ = FACADES[kind]
  assert module.SPEC.kind == kind
  for name in ENTRY_POINTS:
    assert name in module.__all__ and callable(getattr(module, name)), name
  assert ("param_logical_axes" in module.__all__) == (module.SPEC.boxed_init is not None)


@pytest.mark.parametrize("kind", sorted(FACADES))
def test_checkpoint_round_trip_returns_loaded(kind, tmp_path):
  module, tiny = FACADES[kind]
  config = tiny()
  params = module.init_params(config, jax.random.key(0))
  assert module.param_count(config) == sum(x.size for x in jax.tree.leaves(params))
  module.save_checkpoint(tmp_path / kind, config, params)
  loaded = module.load_checkpoint(tmp_path / kind)
  assert isinstance(loaded, Loaded) and loaded.config == config and loaded.meta["kind"] == kind
  assert jax.tree.structure(loaded.params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_vae_logical_axes_follow_the_params():
  config = vae.VAEConfig.tiny()
  axes = vae.param_logical_axes(config)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(vae.abstract_params(config))


def test_planner_meta_carries_its_token_layout(tmp_path):
  config = planner.PlannerConfig.tiny()
  planner.save_checkpoint(tmp_path / "ckpt", config, planner.init_params(config, jax.random.key(0)))
  assert planner.load_checkpoint(tmp_path / "ckpt").meta["plan_tokens"] is None


def test_a_spec_needs_exactly_one_init():
  with pytest.raises(ValueError, match="exactly one of boxed_init and init"):
    ModelSpec(kind="x", config_cls=dict, runtime_fields=frozenset())
  with pytest.raises(ValueError, match="exactly one of boxed_init and init"):
    ModelSpec(kind="x", config_cls=dict, runtime_fields=frozenset(), boxed_init=lambda c: None,
              init=lambda c, rng: {})
  with pytest.raises(ValueError, match="no logical axis names"):
    tatok.SPEC.param_logical_axes(tatok.TATokConfig.tiny())
