"""Issue 7 acceptance 4 and 7: each Plan-X stage at tiny size overfits a fixed synthetic batch; stage 1 updates
only the semantic branch; end-to-end updates both models with planner-CE weight 0.1; LoRA trains only its
factors; the non-finite guard skips a step; bad configs fail before compilation with clear errors."""

import jax
import numpy as np
import pytest

from planx_jax import dit
from planx_jax.models.dit_semantic import add_semantic_branch
from planx_jax.train.config_files import apply_override, load_config
from planx_jax.train.experiment import build_experiment

OVERFIT = ["--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
           "--config.optimizer.lr=3e-3", "--config.batch_size=2", "--config.data.num_records=2"]


def _run(stage, steps, extra=()):
  exp = build_experiment(load_config(f"configs/{stage}.py:tiny", OVERFIT + list(extra)))
  state = exp.init_state()
  before = jax.device_get(state.params)
  batch = exp.global_batch(next(exp.data_iterator()))
  metrics = []
  for _ in range(steps):
    state, m = exp.train_step(state, batch)
    metrics.append(jax.device_get(m))
  return exp, before, jax.device_get(state.params), metrics


def _changed(a, b):
  return jax.tree.map(lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), a, b)


def test_planner_sft_overfits():
  _, before, after, metrics = _run("planner_sft", 12)
  losses = [float(m["loss"]) for m in metrics]
  assert losses[-1] < 0.7 * losses[0], losses
  assert all(jax.tree.leaves(_changed(before, after)))


def test_dit_stage1_overfits_and_trains_only_the_semantic_branch():
  _, before, after, metrics = _run("dit_stage1", 12, ["--config.text_drop.start=0.5"])
  losses = [float(m["loss"]) for m in metrics]
  assert losses[-1] < losses[0], losses
  changed = _changed(before, after)
  flat = jax.tree_util.tree_flatten_with_path(changed)[0]
  semantic = {"k_sem", "v_sem", "norm_k_sem", "semantic_embedding"}
  for path, moved in flat:
    names = {getattr(k, "key", None) for k in path}
    assert moved == bool(names & semantic), (jax.tree_util.keystr(path), moved)


def test_dit_sft_overfits_and_trains_every_base_param(tmp_path):
  exp, before, after, metrics = _run("dit_sft", 12)
  losses = [float(m["loss"]) for m in metrics]
  assert losses[-1] < losses[0], losses
  assert exp.task.dit_config.semantic_in_dim is None and "codebook" not in after
  assert all(jax.tree.leaves(_changed(before, after)))
  # A DiT with the semantic branch is not a base to fine-tune: an error naming the checkpoint.
  config, params = add_semantic_branch(exp.task.dit_config, after["dit"], semantic_in_dim=4)
  dit.save_checkpoint(tmp_path / "with_branch", config, params)
  bad = load_config("configs/dit_sft.py:tiny", OVERFIT + [f"--config.dit.checkpoint={tmp_path / 'with_branch'}"])
  with pytest.raises(ValueError, match="has a semantic branch"):
    build_experiment(bad).init_state()


def test_end_to_end_overfits_and_updates_both_models():
  _, before, after, metrics = _run("end_to_end", 10)
  losses = [float(m["loss"]) for m in metrics]
  assert losses[-1] < losses[0], losses
  for m in metrics:
    np.testing.assert_allclose(float(m["loss"]), 1.0 * float(m["flow_loss"]) + 0.1 * float(m["ce_loss"]),
                               rtol=1e-6)
  changed = _changed(before, after)
  assert all(jax.tree.leaves(changed["planner"])) and all(jax.tree.leaves(changed["dit"]))


def test_lora_trains_only_its_factors_and_starts_at_the_base_model():
  exp = build_experiment(load_config("configs/planner_sft.py:tiny",
                                     OVERFIT + ["--config.lora.rank=4", "--config.lora.targets=('attention',)"]))
  state = exp.init_state()
  params = jax.device_get(state.params)
  merged = exp.task.effective_params(params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), merged["planner"], params["planner"]))
  batch = exp.global_batch(next(exp.data_iterator()))
  for _ in range(2):
    state, _ = exp.train_step(state, batch)
  changed = _changed(params, jax.device_get(state.params))
  assert not any(jax.tree.leaves(changed["planner"]))
  assert all(jax.tree.leaves(changed["lora"]))
  assert set(params["lora"]["planner"]["layers"]["attn"]) == {"q", "k", "v", "o"}


def test_non_finite_loss_skips_the_step_and_counts_it():
  exp = build_experiment(load_config("configs/dit_stage1.py:tiny", OVERFIT))
  state = exp.init_state()
  before = jax.device_get(state.params)
  local = next(exp.data_iterator())
  local["latents"] = local["latents"].copy()
  local["latents"][0, 0, 0, 0, 0] = np.nan
  state, m = exp.train_step(state, exp.global_batch(local))
  assert int(m["skipped"]) == 1 and int(state.skipped) == 1 and int(state.step) == 1
  assert not any(jax.tree.leaves(_changed(before, jax.device_get(state.params))))


def test_unknown_config_keys_are_errors():
  with pytest.raises(ValueError, match="optimizr"):
    load_config("configs/planner_sft.py:tiny", ["--config.optimizr.lr=1"])
  with pytest.raises(ValueError, match="warmup"):
    load_config("configs/planner_sft.py:tiny", ["--config.optimizer.warmpu_steps=1"])
  config = load_config("configs/planner_sft.py:tiny")
  with config.unlocked():
    config.optimizer.betas = (0.9, 0.95)
  with pytest.raises(ValueError, match="betas"):
    build_experiment(config)
  with pytest.raises(ValueError, match="bool"):
    apply_override(load_config("configs/planner_sft.py:tiny"), "checkpoint.async_save=3")


def _tpu_devices():
  from jax.experimental import topologies

  return topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices


def test_mesh_and_batch_errors_before_compilation():
  devices = _tpu_devices()  # 4 devices; nothing is compiled or run
  with pytest.raises(ValueError, match="multiply to 3"):
    build_experiment(load_config("configs/planner_sft.py:tiny", ["--config.mesh.data=3"]), devices=devices)
  with pytest.raises(ValueError, match="not divisible by the product"):
    build_experiment(load_config("configs/planner_sft.py:tiny", ["--config.mesh.data=-1", "--config.mesh.tensor=3"]),
                     devices=devices)
  with pytest.raises(ValueError, match="not divisible by the data-parallel size 4"):
    build_experiment(load_config("configs/planner_sft.py:tiny", ["--config.batch_size=6"]), devices=devices)
  with pytest.raises(ValueError, match="microbatches"):
    build_experiment(load_config("configs/planner_sft.py:tiny", ["--config.batch_size=4", "--config.microbatches=3"]),
                     devices=devices)
  exp = build_experiment(load_config("configs/planner_sft.py:tiny", ["--config.mesh.data=2", "--config.mesh.tensor=2"]),
                         devices=devices)
  assert dict(exp.mesh.shape) == {"data": 2, "fsdp": 1, "context": 1, "tensor": 2}


def test_learning_rate_schedule_warmup_then_cosine():
  from planx_jax.train.optimizer import learning_rate_schedule

  cfg = load_config("configs/planner_sft.py:tiny").optimizer
  with cfg.unlocked():
    cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio, cfg.schedule = 1.0, 4, 0.1, "cosine"
  s = learning_rate_schedule(cfg, 14)
  np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4, 9, 14)],
                             [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)
