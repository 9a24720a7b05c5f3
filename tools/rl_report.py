"""RL run report: reward curves from `planx train` RL workdirs (metrics.jsonl) drawn to a PNG, and optionally the
policy's mean reward before and after training on fixed held-out prompts with fixed sampling keys (so the two
numbers differ only by the params).

  python -m planx_jax.tools.rl_report RUN_DIR [RUN_DIR ...] --out curves.png [--window 5]
  python -m planx_jax.tools.rl_report RUN_DIR --out curves.png --eval-config configs/rl_planner.py:demo \
      --eval-prompts 8 [--config.env.demo_dir=planx_demo]

Not a benchmark of speed (tools/bench_*.py).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def read_metric(workdir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `metric` in workdir/metrics.jsonl (the last entry wins for a step logged twice)."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a `planx train` workdir?")
  by_step = {}
  for line in path.read_text().splitlines():
    entry = json.loads(line)
    if metric in entry:
      by_step[int(entry["step"])] = float(entry[metric])
  if not by_step:
    raise ValueError(f"{path} has no {metric!r} entries")
  steps = np.asarray(sorted(by_step))
  return steps, np.asarray([by_step[s] for s in steps])


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over the last `window` values (fewer at the start)."""
  csum = np.cumsum(np.concatenate([[0.0], values]))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (csum[idx] - csum[lo]) / (idx - lo)


def draw_curves(series: list[tuple[str, np.ndarray, np.ndarray]], path: Path, *, window: int, title: str,
                size=(900, 520)) -> None:
  """One panel: each series' raw values (thin) and trailing mean (thick), with axes, ticks and a legend."""
  w, h = size
  left, right, top, bottom = 70, 20, 40, 50
  img = Image.new("RGB", size, (255, 255, 255))
  d = ImageDraw.Draw(img)
  all_steps = np.concatenate([s for _, s, _ in series])
  all_vals = np.concatenate([v for _, _, v in series])
  x0, x1 = float(all_steps.min()), float(max(all_steps.max(), all_steps.min() + 1))
  lo, hi = float(all_vals.min()), float(all_vals.max())
  pad = 0.05 * max(hi - lo, 1e-6)
  lo, hi = lo - pad, hi + pad
  px = lambda s: left + (s - x0) / (x1 - x0) * (w - left - right)
  py = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)
  d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
  for i in range(6):
    v = lo + (hi - lo) * i / 5
    d.line([left - 4, py(v), left, py(v)], fill=(0, 0, 0))
    d.text((4, py(v) - 6), f"{v:.3f}", fill=(0, 0, 0))
    s = x0 + (x1 - x0) * i / 5
    d.line([px(s), h - bottom, px(s), h - bottom + 4], fill=(0, 0, 0))
    d.text((px(s) - 8, h - bottom + 8), f"{s:.0f}", fill=(0, 0, 0))
  d.text((w // 2 - 20, h - 20), "step", fill=(0, 0, 0))
  d.text((left, 12), title, fill=(0, 0, 0))
  for k, (name, steps, values) in enumerate(series):
    color = COLORS[k % len(COLORS)]
    faint = tuple(int(c + (255 - c) * 0.6) for c in color)
    pts = [(px(s), py(v)) for s, v in zip(steps, values)]
    if len(pts) > 1:
      d.line(pts, fill=faint, width=1)
    smooth = [(px(s), py(v)) for s, v in zip(steps, moving_average(values, window))]
    if len(smooth) > 1:
      d.line(smooth, fill=color, width=3)
    d.text((left + 10, top + 8 + 14 * k), f"{name} (thick: mean of last {window})", fill=color)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)


def evaluate(config_spec: str, overrides: list[str], workdir: Path, num_prompts: int, seed: int) -> dict:
  """Mean reward of the initial and the final policy of `workdir` on the first `num_prompts` held-out prompts,
  group_size samples each, with the same sampling key for both."""
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  import jax

  import planx_jax.rl  # noqa: F401  (registers the RL batch source in train.registry)
  from planx_jax.train.checkpointing import Checkpointer
  from planx_jax.train.config_files import load_config
  from planx_jax.train.experiment import build_experiment

  held_out = ["--config.env.split=heldout", f"--config.env.num_prompts={num_prompts}"]
  config = load_config(config_spec, overrides + held_out)
  exp = build_experiment(config)
  checkpointer = Checkpointer(Path(workdir).absolute() / "checkpoints", save_every=1, keep=1, async_save=False)
  restored = checkpointer.restore(exp.abstract_state())
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint to evaluate")
  out = {}
  for name, state, step in (("initial", exp.init_state(), 0), ("final", restored.state, restored.step)):
    rewards = []
    for first in range(0, num_prompts, exp.source.prompts_per_step):
      indices = list(range(first, min(first + exp.source.prompts_per_step, num_prompts)))
      key_state = state.replace(step=jax.numpy.asarray(seed + first, jax.numpy.int32))  # same keys for both
      rewards.append(exp.source.rollout(indices, key_state).rewards)
    rewards = np.concatenate(rewards)
    out[name] = {"step": int(step), "mean": float(rewards.mean()), "std": float(rewards.std()),
                 "num": int(rewards.size)}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", type=Path, help="`planx train` workdirs of RL runs")
  p.add_argument("--out", type=Path, required=True, help="PNG to write")
  p.add_argument("--metric", default="reward")
  p.add_argument("--window", type=int, default=5)
  p.add_argument("--title", default="")
  p.add_argument("--eval-config", help="the runs' config file[:arg]: also evaluate initial vs final policy")
  p.add_argument("--eval-prompts", type=int, default=8)
  p.add_argument("--eval-seed", type=int, default=1000)
  args, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad}")
  series = []
  for run in args.runs:
    steps, values = read_metric(run, args.metric)
    series.append((run.name, steps, values))
    first, last = values[:args.window].mean(), values[-args.window:].mean()
    print(f"{run}: {args.metric} over steps {steps[0]}..{steps[-1]}: first {args.window} mean {first:.4f}, "
          f"last {args.window} mean {last:.4f} ({last - first:+.4f}); all-step mean {values.mean():.4f}")
  draw_curves(series, args.out, window=args.window, title=args.title or f"{args.metric} per RL step")
  print(f"wrote {args.out}")
  if args.eval_config:
    for run in args.runs:
      result = evaluate(args.eval_config, overrides, run, args.eval_prompts, args.eval_seed)
      print(f"{run}: held-out eval ({args.eval_prompts} prompts x G, fixed keys): "
            + ", ".join(f"{k} (step {v['step']}) {v['mean']:.4f} +- {v['std']:.4f}" for k, v in result.items()))
      (run / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
