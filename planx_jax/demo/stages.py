"""The demo's training runs: each stage is a real experiment (`train.experiment` + `train.loop`) in its own workdir,
and its trained models are handed to the next stage as planx checkpoints. Not the configs (demo.settings).

Re-running resumes: a stage whose workdir already holds its last checkpoint is restored, not retrained.
"""

import logging
from pathlib import Path

import jax
import numpy as np

from planx_jax import dit, planner
from planx_jax.data.tokenizer import planner_tokenizer
from planx_jax.train.experiment import build_experiment
from planx_jax.train.loop import train

log = logging.getLogger("planx.demo")


def run_stage(config, workdir: Path, progress: bool = True) -> tuple[object, dict]:
  """Trains one stage to `config.num_steps` in `workdir`; returns (task, host params with LoRA merged)."""
  exp = build_experiment(config)
  log.info("stage %s: %d steps of batch %d in %s", config.stage, config.num_steps, config.batch_size, workdir)
  summary = train(exp, workdir, progress=progress)
  if summary.stopped_by is not None:
    raise KeyboardInterrupt(f"stage {config.stage} stopped by {summary.stopped_by} at step {summary.step}; its "
                            f"checkpoint is in {workdir}: run the demo again to resume")
  if summary.losses:
    log.info("stage %s: loss %.4f -> %.4f over steps %d..%d", config.stage, summary.losses[0], summary.losses[-1],
             summary.start_step + 1, summary.step)
  params = jax.tree.map(np.asarray, jax.device_get(exp.task.effective_params(summary.state.params)))
  return exp.task, params


def save_planner(task, params: dict, config, path: Path) -> Path:
  tokenizer, plan_tokens = planner_tokenizer(config)
  return planner.save_checkpoint(path, task.planner_config, params["planner"], plan_tokens=plan_tokens,
                                 tokenizer=tokenizer, overwrite=True)


def save_dit(task, params: dict, path: Path) -> Path:
  return dit.save_checkpoint(path, task.dit_config, params["dit"], overwrite=True)
