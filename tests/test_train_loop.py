"""The training loop on the tiny planner SFT config, in subprocesses: exact resume after SIGKILL at a random step
(same losses, batches and params bit for bit), SIGTERM saves and exits cleanly, a corrupted latest checkpoint
falls back to the previous one with a warning, TensorBoard scalars and a profile are written; plus MFU helpers.

Run as a script, this file is the subprocess driver: `python tests/test_train_loop.py WORKDIR [--kill-after K]
[--term-after K] [--override key=value] [--batch-log FILE]`, from the repository root.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NUM_STEPS = 6
OVERRIDES = (f"num_steps={NUM_STEPS}", "batch_size=2", "checkpoint.every=1", "checkpoint.keep=3",
             "checkpoint.async_save=True", "log.every=1", "log.profile_start=2", "log.profile_steps=1")


def driver_main(argv=None):
  """Trains the tiny config in WORKDIR; writes summary.json and params.npz there (and each batch's digest)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--override", action="append", default=[])
  parser.add_argument("--kill-after", type=int, default=0, help="SIGKILL this process after that step")
  parser.add_argument("--term-after", type=int, default=0, help="send SIGTERM to this process after that step")
  parser.add_argument("--batch-log", default="", help="append a digest of every drawn batch to this file")
  args = parser.parse_args(argv)

  import logging

  import jax

  from planx_jax.train.config_files import load_config
  from planx_jax.train.experiment import build_experiment
  from planx_jax.train.loop import train

  logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)
  exp = build_experiment(load_config("configs/planner_sft.py:tiny", [*OVERRIDES, *args.override]))
  if args.batch_log:
    global_batch = exp.global_batch

    def logged_global_batch(local):
      digest = hashlib.sha256(b"".join(np.ascontiguousarray(local[k]).tobytes() for k in sorted(local)))
      with open(args.batch_log, "a") as f:
        f.write(digest.hexdigest() + "\n")
      return global_batch(local)

    exp.global_batch = logged_global_batch

  def on_step(step):
    if step == args.kill_after:
      os.kill(os.getpid(), signal.SIGKILL)
    if step == args.term_after:
      os.kill(os.getpid(), signal.SIGTERM)

  summary = train(exp, args.workdir, progress=False, on_step=on_step)
  params = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(summary.state.params)}
  np.savez(Path(args.workdir) / "params.npz", **params)
  (Path(args.workdir) / "summary.json").write_text(json.dumps(
      {"start_step": summary.start_step, "step": summary.step, "losses": summary.losses,
       "stopped_by": summary.stopped_by}))


def launch(workdir, *args, cache_dir) -> subprocess.Popen:
  """Starts the driver; runs share a persistent compilation cache (the same executable, compiled once) and XLA's
  fast CPU compile settings (every run compiles the same way, so the bit-for-bit checks hold)."""
  from conftest import fast_compile_env

  Path(workdir).mkdir(parents=True, exist_ok=True)
  env = {**fast_compile_env(), "JAX_COMPILATION_CACHE_DIR": str(cache_dir)}
  return subprocess.Popen([sys.executable, __file__, str(workdir), *map(str, args)], cwd=Path(__file__).parent.parent,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout=240):
  output, _ = proc.communicate(timeout=timeout)
  return proc.returncode, output


def read_summary(workdir):
  return json.loads((Path(workdir) / "summary.json").read_text())


def read_params(workdir):
  with np.load(Path(workdir) / "params.npz") as f:
    return {k: f[k] for k in f.files}


def read_jsonl(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def committed_steps(workdir):
  root = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """All training subprocesses, at most two at a time: a straight run, a run that receives SIGTERM, a run
  SIGKILLed after a random step and its resume, and a resume over a corrupted latest checkpoint."""
  root = tmp_path_factory.mktemp("train_loop")
  cache = root / "jax_cache"
  kill_after = random.Random().randint(2, NUM_STEPS - 1)
  out = {"root": root, "kill_after": kill_after}
  straight = launch(root / "straight", "--batch-log", root / "straight_batches.txt", "--override",
                    "checkpoint.export_every=4", cache_dir=cache)
  termed = launch(root / "termed", "--term-after", 3, "--override", "checkpoint.every=100", cache_dir=cache)
  out["straight"], out["termed"] = finish(straight), finish(termed)
  assert out["straight"][0] == 0, out["straight"][1][-3000:]

  corrupt_dir = root / "corrupt"
  shutil.copytree(root / "straight" / "checkpoints", corrupt_dir / "checkpoints")
  latest = corrupt_dir / "checkpoints" / str(NUM_STEPS) / "state"
  array_file = max((p for p in latest.rglob("*") if p.is_file() and p.parent.name == "d"),
                   key=lambda p: p.stat().st_size)
  array_file.write_bytes(np.random.default_rng(0).bytes(array_file.stat().st_size))
  killed = launch(root / "killed", "--kill-after", kill_after, "--batch-log", root / "killed_batches.txt",
                  cache_dir=cache)
  corrupt = launch(corrupt_dir, cache_dir=cache)
  out["killed"], out["corrupt"] = finish(killed), finish(corrupt)
  assert out["killed"][0] == -signal.SIGKILL, out["killed"][1][-3000:]

  out["killed_steps"] = committed_steps(root / "killed")
  out["resumed"] = finish(launch(root / "killed", "--batch-log", root / "resumed_batches.txt", cache_dir=cache))
  return out


def test_exact_resume_after_sigkill(runs):
  root, kill_after = runs["root"], runs["kill_after"]
  assert runs["resumed"][0] == 0, runs["resumed"][1][-3000:]
  straight, resumed = read_summary(root / "straight"), read_summary(root / "killed")
  assert straight["step"] == NUM_STEPS and len(straight["losses"]) == NUM_STEPS
  start = resumed["start_step"]
  assert 1 <= start <= kill_after and start == max(runs["killed_steps"]), (kill_after, runs["killed_steps"])
  assert resumed["step"] == NUM_STEPS
  assert resumed["losses"] == straight["losses"][start:], f"killed after step {kill_after}, resumed at {start}"
  # Every logged step of the killed run and its resume (steps start+1..kill_after appear twice) matches.
  losses_by_step = {}
  for row in read_jsonl(root / "killed"):
    losses_by_step.setdefault(row["step"], set()).add(row["loss"])
  assert sorted(losses_by_step) == list(range(1, NUM_STEPS + 1))
  assert [losses_by_step[s] for s in sorted(losses_by_step)] == [{x} for x in straight["losses"]]
  # Data order: the same batches in the same order.
  straight_batches = (root / "straight_batches.txt").read_text().split()
  killed_batches = (root / "killed_batches.txt").read_text().split()
  resumed_batches = (root / "resumed_batches.txt").read_text().split()
  assert len(killed_batches) == kill_after and len(set(straight_batches)) == NUM_STEPS
  assert killed_batches[:start] + resumed_batches == straight_batches
  final, expected = read_params(root / "killed"), read_params(root / "straight")
  assert sorted(final) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(final[name], expected[name], err_msg=name)


def test_sigterm_saves_the_step_reached_and_exits_cleanly(runs):
  code, output = runs["termed"]
  assert code == 0, output[-3000:]
  summary = read_summary(runs["root"] / "termed")
  assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 3 and len(summary["losses"]) == 3
  assert committed_steps(runs["root"] / "termed") == [3]
  assert "received SIGTERM" in output and "stopped by SIGTERM after step 3 of 6" in output


def test_corrupted_latest_checkpoint_falls_back_with_warning(runs):
  code, output = runs["corrupt"]
  assert code == 0, output[-3000:]
  root = runs["root"]
  summary, straight = read_summary(root / "corrupt"), read_summary(root / "straight")
  assert summary["start_step"] == NUM_STEPS - 1 and summary["losses"] == straight["losses"][-1:]
  assert f"checkpoint step {NUM_STEPS} in" in output and "is unreadable" in output
  final, expected = read_params(root / "corrupt"), read_params(root / "straight")
  for name in expected:
    np.testing.assert_array_equal(final[name], expected[name], err_msg=name)
  assert len(list((root / "corrupt" / "checkpoints").glob(f"{NUM_STEPS}.unreadable-*"))) == 1


def test_tensorboard_scalars_and_profile(runs):
  from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

  workdir = runs["root"] / "straight"
  files = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 1
  scalars = {}
  for event in LegacyEventFileLoader(str(files[0])).Load():
    for value in event.summary.value:
      scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  rows = {row["step"]: row for row in read_jsonl(workdir)}
  for tag in ("loss", "lr", "grad_norm"):
    assert sorted(scalars[tag]) == list(range(1, NUM_STEPS + 1)), tag
    for step, value in scalars[tag].items():
      assert value == np.float32(rows[step][tag]), (tag, step)
  assert all(np.isfinite(v) and v > 0 for v in scalars["perf/steps_per_sec"].values())
  assert "perf/mfu" not in scalars  # CPU: no known peak
  assert list((workdir / "profile").rglob("*.xplane.pb"))


def test_exports_every_n_steps(runs):
  export = runs["root"] / "straight" / "export"
  assert sorted(p.name for p in export.iterdir()) == ["step_4"]
  assert list((export / "step_4" / "planner_hf").glob("*.safetensors"))


def test_peak_flops_table_and_mfu():
  from planx_jax.train.metrics_writer import model_flops_utilization, peak_flops_per_device

  assert peak_flops_per_device("TPU v5 lite") == peak_flops_per_device("TPU v5e") == 197e12
  assert peak_flops_per_device("TPU v5") == peak_flops_per_device("TPU v5p") == 459e12
  assert peak_flops_per_device("TPU v6 lite") == 918e12 and peak_flops_per_device("TPU v4") == 275e12
  assert peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
  assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == peak_flops_per_device("NVIDIA H200") == 989e12
  assert peak_flops_per_device("cpu") is None
  # 8 devices at 100 TFLOP/s running 4e14 FLOPs in 1 s use half of their 8e14.
  assert model_flops_utilization(4e14, 1.0, 100e12, 8) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="positive step time"):
    model_flops_utilization(1.0, 0.0, 1.0, 1)


def test_metrics_logger_reports_mfu_for_a_known_device(tmp_path):
  from types import SimpleNamespace

  from planx_jax.train.metrics_writer import MetricsLogger

  devices = [SimpleNamespace(device_kind="TPU v5 lite")] * 4
  logger = MetricsLogger(tmp_path, start_step=0, num_steps=3, examples_per_step=8, model_flops_per_step=1e12,
                         devices=devices, tensorboard=False, progress=False)
  logger.start_clock(1)
  logger.log([(2, {"loss": 2.0}), (3, {"loss": 1.5})])
  logger.close()
  rows = read_jsonl(tmp_path)
  assert [r["step"] for r in rows] == [2, 3] and "perf/mfu" not in rows[0]
  step_time = rows[1]["perf/step_time_s"]
  assert rows[1]["perf/examples_per_sec"] == pytest.approx(8 / step_time)
  assert rows[1]["perf/mfu"] == pytest.approx(1e12 / (step_time * 197e12 * 4))


if __name__ == "__main__":
  driver_main()
