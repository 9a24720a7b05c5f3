"""`planx demo`: builds the synthetic world's data, trains a tiny Plan-X (planner SFT, DiT SFT, DiT stage 1,
end-to-end) on CPU, renders held-out instructions and prints the judge's table; `--ablation` adds DiT-only, Plan-X
without 3D RoPE and without end-to-end training. Re-running with the same --out resumes the finished stages."""

import logging
import time
from pathlib import Path

from planx_jax.train.config_files import load_config

log = logging.getLogger("planx.demo")

DEFAULT_CONFIG = "configs/demo.py"


def add_parser(sub) -> None:
  p = sub.add_parser("demo", help="train a tiny Plan-X on the synthetic world, render held-out videos, benchmark")
  p.add_argument("--out", type=Path, default=Path("planx_demo"), help="output directory (default planx_demo/)")
  p.add_argument("--config", default=DEFAULT_CONFIG, help="the demo config file (default configs/demo.py)")
  p.add_argument("--ablation", action="store_true",
                 help="also train and score DiT-only (same DiT compute), Plan-X w/o 3D RoPE and w/o end-to-end")
  p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
  p.set_defaults(run=run, accepts_config_overrides=True)


def run(args) -> int:
  from planx_jax.demo.run import run_demo  # heavy imports after argument parsing

  demo = load_config(args.config, args.config_overrides)
  if "steps" not in demo or "world" not in demo:
    raise ValueError(f"{args.config} is not a demo config (it has no steps / world sections); use configs/demo.py")
  began = time.time()
  result = run_demo(args.out, demo, ablation=args.ablation, progress=not args.no_progress)
  out = args.out
  print(result["text"])
  print(f"\nfinished in {(time.time() - began) / 60:.1f} min. Outputs in {out}/:")
  print("  videos/<method>/NNN.mp4 (+ NNN.json, the instruction), videos/plan_x/NNN_plan.png (planned vs rendered "
        "keyframes), NNN_contact_sheet.png")
  print("  benchmark.md, benchmark.json; runs/<stage>/ (checkpoints, TensorBoard); models/ (planx checkpoints)")
  print(f"  score any directory of videos with: planx eval {out}/videos/plan_x")
  return 0
