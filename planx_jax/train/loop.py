"""The training loop, top to bottom: restore (or init) the train state and the data iterator, then step, log,
checkpoint and export until `num_steps` or a stop signal. Not the step function or the experiment wiring.

Exact resume: a checkpoint at step N holds the state after N steps and each process's data iterator state after
drawing the batch of step N, so a resumed run draws the same batches and (on the same devices) computes the same
numbers. Metrics stay on device and are fetched to the host every `config.log.every` steps.
"""

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax

from planx_jax.train.checkpointing import Checkpointer, PreemptionGuard
from planx_jax.train.metrics_writer import MetricsLogger, ProfileWindow

log = logging.getLogger("planx.train")


@dataclasses.dataclass(frozen=True)
class TrainSummary:
  start_step: int  # the step this call resumed from (0 for a fresh run)
  step: int  # the number of completed steps when it returned
  losses: tuple[float, ...]  # the loss of each step this call ran: steps start_step + 1 .. step
  stopped_by: str | None  # None when num_steps was reached, else "SIGTERM", "SIGINT" or "preemption"
  state: Any  # the final train state


def train(exp, workdir: str | Path, *, num_steps: int | None = None, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> TrainSummary:
  """Trains `exp` in `workdir` (checkpoints/, export/, tensorboard/, metrics.jsonl, profile/): an `Experiment`, or a
  composite one with its interface (config, examples_per_step, mesh, data_iterator, abstract_state, init_state,
  next_batch, train_step returning metrics with "loss", model_flops_per_step, export).

  Args:
    num_steps: total steps of the run, counted from step 0 (default `config.num_steps`); a resumed run only
      runs the remainder.
    progress: draw a tqdm bar on process 0.
    on_step: called with the step number after each completed step (after its checkpoint was started).
  """
  config = exp.config
  num_steps = config.num_steps if num_steps is None else num_steps
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if config.log.every < 1:
    raise ValueError(f"config.log.every must be >= 1, got {config.log.every}")
  if config.checkpoint.export_every < 0:
    raise ValueError(f"config.checkpoint.export_every must be >= 0 (0 = never), got {config.checkpoint.export_every}")
  workdir = Path(workdir).absolute()  # Orbax writes to absolute paths only: a relative workdir is the cwd's
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint.every,
                              keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  data = exp.data_iterator(process_index=jax.process_index(), process_count=jax.process_count())
  try:
    restored = checkpointer.restore(exp.abstract_state())
    if restored is None:
      start_step, state = 0, exp.init_state()
      log.info("no checkpoint in %s: starting from step 0 (seed %d)", checkpointer.directory, config.seed)
    else:
      start_step, state, data_state = restored
      data.set_state(data_state)
      log.info("resumed from the checkpoint of step %d in %s", start_step, checkpointer.directory)
    if start_step >= num_steps:
      log.info("the run already reached step %d of %d: nothing to do", start_step, num_steps)
      return TrainSummary(start_step, start_step, (), None, state)
    return _run_steps(exp, workdir, checkpointer, data, state, start_step, num_steps, progress, on_step)
  finally:
    data.close()
    checkpointer.close()


def _run_steps(exp, workdir: Path, checkpointer: Checkpointer, data, state, start_step: int, num_steps: int,
               progress: bool, on_step) -> TrainSummary:
  config = exp.config
  config_json = config.to_json()
  logger = MetricsLogger(workdir, start_step=start_step, num_steps=num_steps, examples_per_step=exp.examples_per_step,
                         model_flops_per_step=exp.model_flops_per_step(), devices=list(exp.mesh.devices.flat),
                         tensorboard=config.log.tensorboard, progress=progress)
  profile = ProfileWindow(workdir / "profile", start=config.log.profile_start, num_steps=config.log.profile_steps)
  step, losses, stopped_by = start_step, [], None
  pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched

  def flush_metrics():
    fetched = list(zip([s for s, _ in pending], jax.device_get([m for _, m in pending])))
    losses.extend(float(m["loss"]) for _, m in fetched)
    logger.log(fetched)
    pending.clear()

  try:
    with PreemptionGuard() as guard:
      while step < num_steps:
        profile.before_step(step)
        began = time.perf_counter()
        batch = exp.next_batch(data, state)
        state, metrics = exp.train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        if step == start_step + 1:
          jax.block_until_ready(metrics)
          logger.message(f"step {step} took {time.perf_counter() - began:.1f} s (compiling the train step)")
          logger.start_clock(step)
        profile.after_step(step, metrics)
        logger.step_done()
        if step % config.log.every == 0 or step == num_steps:
          flush_metrics()
        if step == num_steps or checkpointer.should_save(step):
          checkpointer.save(step, state, data.get_state(), config_json, force=True)
        if config.checkpoint.export_every and step % config.checkpoint.export_every == 0:
          export_dir = workdir / "export" / f"step_{step}"
          exp.export(state, export_dir)
          logger.message(f"exported step {step} to {export_dir}")
        if on_step is not None:
          on_step(step)
        if guard.requested or checkpointer.reached_preemption(step):
          checkpointer.save(step, state, data.get_state(), config_json, force=True)
          stopped_by = guard.signal_name or "preemption"
          break
    flush_metrics()
    checkpointer.wait_until_finished()
    if stopped_by is not None:
      logger.message(f"stopped by {stopped_by} after step {step} of {num_steps}; checkpoint saved in "
                     f"{checkpointer.directory}: run the same command again to resume")
  finally:
    profile.close()
    logger.close()
  return TrainSummary(start_step, step, tuple(losses), stopped_by, state)
