"""`planx train`: run one Plan-X training stage from an experiment config file, resuming from the workdir's
latest checkpoint. Default: the tiny planner SFT config on CPU with synthetic data."""

import argparse
import logging
from pathlib import Path

from planx_jax.parallel import distributed

log = logging.getLogger("planx.train")

DEFAULT_CONFIG = "configs/planner_sft.py:tiny"


def add_parser(sub) -> None:
  p = sub.add_parser("train", help="train a Plan-X stage (planner SFT, DiT SFT, DiT stage 1, end-to-end) or run RL "
                                   "post-training (planner GRPO / GSPO, DiT Flow-GRPO, the TempAct hierarchy)")
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help=f"experiment config file[:arg] (default {DEFAULT_CONFIG}); override fields with "
                      "--config.key=value")
  p.add_argument("--workdir", type=Path, default=Path("runs/planner_sft_tiny"),
                 help="checkpoints, TensorBoard events and exports go here; an existing run resumes")
  p.add_argument("--num-steps", type=int, help="stop after this many steps in total (default config.num_steps)")
  p.add_argument("--print-shardings", action="store_true", help="print every param's sharding before training")
  p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  p.add_argument("--coordinator", help="multi-host: host:port of process 0 ('auto' on Cloud TPU pods)")
  p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
  p.add_argument("--process-id", type=int, help="multi-host: this process's index")
  p.set_defaults(run=run, accepts_config_overrides=True)


def run(args: argparse.Namespace) -> int:
  import planx_jax.rl  # noqa: F401  (registers the RL batch source and the TempAct experiment in train.registry)
  from planx_jax.train.config_files import load_config
  from planx_jax.train.experiment import build_experiment
  from planx_jax.train.loop import train

  config = load_config(args.config, args.config_overrides)
  if distributed.initialize(args.coordinator, args.num_processes, args.process_id):
    import jax

    print(f"planx train: process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices in all",
          flush=True)
  exp = build_experiment(config)
  if args.print_shardings:
    print(exp.describe_params())
  summary = train(exp, args.workdir, num_steps=args.num_steps, progress=not args.no_progress)
  last = f", last loss {summary.losses[-1]:.4f}" if summary.losses else ""
  stopped = f" (stopped by {summary.stopped_by})" if summary.stopped_by else ""
  print(f"planx train: {exp.stage} at step {summary.step} in {args.workdir}{last}{stopped}")
  return 0
