"""The RL loops end to end on the demo world at tiny size (random tiny models, small encoders), both through
`train.loop.train`: planner GRPO with checkpoint / resume of the prompt cursor; the TempAct hierarchy (planner GSPO +
executor Flow-GRPO rollouts on the transition chunk, both updates in one step, one checkpoint, export and profile),
and a TempAct run stopped by SIGTERM after step 1 (saved, returned) whose resume ends in the straight run's state.

Each loop runs in its own subprocess (the two at once, one per core) compiling with XLA's fast CPU settings
(LLVM -O0, the classic fusion emitters): nearly all the time is compiling tiny programs, and nothing checked depends
on CPU code generation. The subprocess reports what the tests check as JSON."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import fast_compile_env

SCRIPT = textwrap.dedent(r'''
  import json, os, signal, sys
  from pathlib import Path
  import jax
  import numpy as np
  from planx_jax.configs import rl_planner, rl_tempact
  from planx_jax.rl.experiment import RolloutBatches, build_environment
  from planx_jax.train.experiment import build_experiment
  from planx_jax.train.loop import train

  which, workdir = sys.argv[1], Path(sys.argv[2])
  env = build_environment(rl_planner.get_config("tiny"), None)
  RolloutBatches.environment = lambda self: env  # the tiny world, built once
  out = {}
  if which == "planner":
    exp = build_experiment(rl_planner.get_config("tiny"))
    first = train(exp, workdir, num_steps=1, progress=False)
    rows = exp.source.last_rollout.rows
    out.update(first_step=first.step, first_losses=list(first.losses), shape=list(rows["token_ids"].shape),
               first_indices=exp.source.last_indices, group_sums=rows["advantages"].reshape(2, 2).sum(1).tolist(),
               logp_off_target=float(np.abs(rows["old_logp"][~np.roll(rows["loss_mask"], -1, axis=1)]).max()))
    second = train(exp, workdir, num_steps=2, progress=False)  # a new run in the same workdir resumes
    logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    out.update(second=[second.start_step, second.step], second_indices=exp.source.last_indices,
               reward_steps=[e["step"] for e in logged if "reward" in e])
  else:
    c = rl_tempact.get_config("tiny")  # 2 steps
    c.checkpoint.export_every, c.log.profile_start, c.log.profile_steps = 2, 1, 1
    exp = build_experiment(c)
    first_rollout = []
    straight = train(exp, workdir / "straight", progress=False,
                     on_step=lambda step: first_rollout.append(exp.last_rollout) if step == 1 else None)
    r = first_rollout[0]
    k, rows = r.switch, r.executor_rows
    logged = [json.loads(l) for l in (workdir / "straight" / "metrics.jsonl").read_text().splitlines()]
    out.update(history=[{"r_plan": float(r.plan_rewards.mean()), "r_judge": float(r.judge_rewards.mean()),
                         "r_video": float(r.video_rewards.mean())}],
               switch=k, rows=int(rows["latents"].shape[0]), planner_rows=int(r.planner_rows["token_ids"].shape[0]),
               context_fixed=float(np.abs(rows["frame_mask"][:, :k + 1]).max()),
               logprob_mask=rows["logprob_mask"].tolist(),
               context_kept=bool(np.array_equal(rows["latents"][:, :k + 1], rows["next_latents"][:, :k + 1])),
               context_shared=bool(np.array_equal(rows["latents"][0, :k + 1], rows["latents"][1, :k + 1])),
               sigma_down=bool(np.all(rows["sigma_next"] < rows["sigma"])),
               exec_group_sums=rows["advantages"].reshape(2, 2).sum(1).tolist(),
               plan_group_sum=float(r.planner_rows["advantages"].sum()),
               checkpoints=[(workdir / "straight" / "checkpoints" / "2").is_dir()],
               metrics=[all(f"{n}/loss" in e and f"{n}/reward" in e for e in logged) for n in ("planner", "executor")],
               logged_steps=[e["step"] for e in logged],
               exported=sorted(str(p.relative_to(workdir / "straight" / "export")) for p in
                               (workdir / "straight" / "export" / "step_2").glob("*/*")),
               profiled=any((workdir / "straight" / "profile").rglob("*.xplane.pb")))
    # SIGTERM after step 1 of 2: the loop saves that step and returns; the next run resumes it.
    termed = train(exp, workdir / "termed", progress=False,
                   on_step=lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None)
    committed = sorted(int(p.name) for p in (workdir / "termed" / "checkpoints").iterdir()
                       if (p / "commit_success.txt").exists())
    resumed = train(exp, workdir / "termed", progress=False)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        jax.device_get(straight.state), jax.device_get(resumed.state))
    out.update(termed=[termed.step, termed.stopped_by, committed], resumed=[resumed.start_step, resumed.step],
               same_final_state=all(jax.tree.leaves(same)),
               same_losses=list(straight.losses) == list(termed.losses) + list(resumed.losses))
  print("RESULTS " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
  env = dict(fast_compile_env(), JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = tmp_path_factory.mktemp("rl_loops")
  procs = {}
  try:
    for which in ("planner", "tempact"):  # output to files: a full pipe would stall a subprocess
      with open(base / f"{which}.out", "w") as out, open(base / f"{which}.err", "w") as err:
        procs[which] = subprocess.Popen([sys.executable, "-c", SCRIPT, which, str(base / which)], cwd=root, env=env,
                                        stdout=out, stderr=err)
    results, deadline = {}, time.monotonic() + 900
    for which, proc in procs.items():
      returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      assert returncode == 0, (base / f"{which}.err").read_text()[-4000:]
      line = [l for l in (base / f"{which}.out").read_text().splitlines() if l.startswith("RESULTS ")][-1]
      results[which] = json.loads(line[len("RESULTS "):])
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return results


def test_planner_grpo_trains_and_resumes_its_prompt_cursor(loops):
  r = loops["planner"]
  assert r["first_step"] == 1 and np.isfinite(r["first_losses"]).all()
  assert r["shape"] == [4, 1280] and r["first_indices"] == [0, 1]
  np.testing.assert_allclose(r["group_sums"], 0.0, atol=1e-5)  # normalised within each prompt's G plans
  assert r["logp_off_target"] == 0.0  # only the planned code tokens are scored
  assert r["second"] == [1, 2]  # the second run resumed from step 1
  assert r["second_indices"] == [2, 3]  # the prompt cursor came back from the checkpoint
  assert r["reward_steps"] == [1, 2]


def test_tempact_step(loops):
  r = loops["tempact"]
  (h,) = r["history"]
  assert 0.0 <= h["r_judge"] <= 1.0 and 0.0 <= h["r_video"] <= 1.0
  np.testing.assert_allclose(h["r_plan"], 0.15 * h["r_judge"] + 0.85 * h["r_video"], atol=1e-5)
  k = r["switch"]
  assert r["rows"] == 4 and r["planner_rows"] == 2  # 1 prompt x M 2 plans (x N 2 continuations x 1 step)
  assert r["context_fixed"] == 0.0 and r["context_kept"]  # frames 0..k are the plan's fixed context
  assert r["context_shared"]  # one context per plan, shared by its continuations
  np.testing.assert_array_equal(r["logprob_mask"], np.repeat((np.arange(5) == k + 1)[None], 4, 0))  # the chunk
  assert r["sigma_down"]
  np.testing.assert_allclose(r["exec_group_sums"], 0.0, atol=1e-5)  # exec advantages over each plan's N
  assert abs(r["plan_group_sum"]) < 1e-5  # plan advantages over the prompt's M plans
  assert r["checkpoints"] == [True] and r["metrics"] == [True, True]  # one checkpoint, one log: both models
  assert r["logged_steps"] == [1, 2]
  assert r["exported"] == ["step_2/executor/dit_diffusers", "step_2/planner/planner_hf"] and r["profiled"]


def test_tempact_sigterm_saves_exits_and_resumes_exactly(loops):
  r = loops["tempact"]
  assert r["termed"] == [1, "SIGTERM", [1]]  # stopped after step 1 with that step saved
  assert r["resumed"] == [1, 2]
  assert r["same_final_state"]  # both models' params, optimizer states and keys, bit for bit
  assert r["same_losses"]
