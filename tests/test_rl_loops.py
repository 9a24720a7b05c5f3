"""The RL loops end to end on the demo world at tiny size (random tiny models, small encoders): planner GRPO through
`train.loop.train` with checkpoint / resume of the prompt cursor, and one TempAct hierarchy step (planner GSPO +
executor Flow-GRPO rollouts on the transition chunk, both updates, both checkpoints). One world environment is
shared."""

import json

import numpy as np
import pytest

from planx_jax.configs import rl_planner, rl_tempact
from planx_jax.rl import hierarchy
from planx_jax.rl.experiment import RLExperiment, build_environment
from planx_jax.train.loop import train


@pytest.fixture(scope="module")
def world_env():
  c = rl_planner.get_config("tiny")
  return build_environment(c, None)


def planner_experiment(env):
  exp = RLExperiment(rl_planner.get_config("tiny"))
  exp.env = env
  return exp


def test_planner_grpo_trains_and_resumes_its_prompt_cursor(world_env, tmp_path):
  exp = planner_experiment(world_env)
  first = train(exp, tmp_path, num_steps=1, progress=False)
  assert first.step == 1 and np.isfinite(first.losses).all()
  rows = exp.last_rollout.rows
  assert rows["token_ids"].shape == (4, 1280)
  assert exp.last_indices == [0, 1]
  groups = rows["advantages"].reshape(2, 2)
  np.testing.assert_allclose(groups.sum(axis=1), 0.0, atol=1e-5)  # normalised within each prompt's G plans
  np.testing.assert_array_equal(rows["old_logp"][~np.roll(rows["loss_mask"], -1, axis=1)], 0.0)
  second = train(exp, tmp_path, num_steps=2, progress=False)  # a new run in the same workdir resumes
  assert (second.start_step, second.step) == (1, 2)
  assert exp.last_indices == [2, 3]  # the prompt cursor came back from the checkpoint
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [e["step"] for e in logged if "reward" in e] == [1, 2]


def test_tempact_step(world_env, tmp_path):
  c = rl_tempact.get_config("tiny")
  c.num_steps = 1
  original = RLExperiment.environment
  RLExperiment.environment = lambda self: world_env  # the shared tiny world
  try:
    result = hierarchy.train_tempact(c, tmp_path, progress=False)
  finally:
    RLExperiment.environment = original
  (h,) = result["history"]
  assert 0.0 <= h["r_judge"] <= 1.0 and 0.0 <= h["r_video"] <= 1.0
  np.testing.assert_allclose(h["r_plan"], 0.15 * h["r_judge"] + 0.85 * h["r_video"], atol=1e-5)
  out = result["rollout"]
  k = out.switch
  rows = out.executor_rows  # 1 prompt x M 2 plans x N 2 continuations x 1 trained step
  assert rows["latents"].shape[0] == 4 and out.planner_rows["token_ids"].shape[0] == 2
  np.testing.assert_array_equal(rows["frame_mask"][:, :k + 1], 0.0)  # the plan's shared context is fixed
  np.testing.assert_array_equal(rows["logprob_mask"], (np.arange(5) == k + 1)[None].repeat(4, 0))  # the chunk
  np.testing.assert_array_equal(rows["latents"][:, :k + 1], rows["next_latents"][:, :k + 1])
  np.testing.assert_array_equal(rows["latents"][0, :k + 1], rows["latents"][1, :k + 1])  # one context per plan
  assert np.all(rows["sigma_next"] < rows["sigma"])
  np.testing.assert_allclose(rows["advantages"].reshape(2, 2).sum(axis=1), 0.0, atol=1e-5)  # over N per plan
  np.testing.assert_allclose(out.planner_rows["advantages"].sum(), 0.0, atol=1e-5)  # over the M plans
  for name in ("planner", "executor"):
    assert (tmp_path / name / "checkpoints" / "1").is_dir()
    assert (tmp_path / name / "metrics.jsonl").is_file()
