"""What a training run reports: TensorBoard scalar event files, `metrics.jsonl`, a tqdm progress bar, throughput and
an MFU estimate, and a `jax.profiler` trace over a step window. Not the metrics themselves (the step computes them).

TensorBoard files are written with the `tensorboard` package alone (no TensorFlow). Only process 0 writes files and
draws the bar; every process traces its own profile.
"""

import json
import logging
import math
import time
from pathlib import Path

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm.auto import tqdm

log = logging.getLogger("planx.train.metrics")

# Dense bf16 FLOP/s of one JAX device (one chip; TPU v4 / v5p in megacore mode), by lower-cased `device_kind`
# prefix; the first match wins, so the longer names come first.
PEAK_BF16_FLOPS = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
    ("nvidia h100 pcie", 756e12),
    ("nvidia h100", 989e12),
    ("nvidia h200", 989e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of a device kind (e.g. "TPU v5 lite", "NVIDIA H200"), None when unknown (CPUs)."""
  kind = device_kind.lower()
  for prefix, flops in PEAK_BF16_FLOPS:
    if kind.startswith(prefix):
      return flops
  return None


def model_flops_utilization(model_flops_per_step: float, step_time_s: float, peak_flops: float,
                            num_devices: int) -> float:
  """Model FLOPs per second over the peak of all devices: flops / (step time * peak per device * devices)."""
  if step_time_s <= 0 or peak_flops <= 0 or num_devices < 1:
    raise ValueError(f"MFU needs a positive step time, peak and device count, got {step_time_s}, {peak_flops}, "
                     f"{num_devices}")
  return model_flops_per_step / (step_time_s * peak_flops * num_devices)


class TensorBoardWriter:
  """Scalars into one TensorBoard event file under `logdir`."""

  def __init__(self, logdir: str | Path):
    self._writer = EventFileWriter(str(logdir))

  def scalars(self, step: int, values: dict[str, float]):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                                         for tag, value in values.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MetricsLogger:
  """Reports the metrics of logged steps with throughput and MFU (TensorBoard, metrics.jsonl, progress bar).

  Args:
    workdir: run directory; TensorBoard files go to `workdir/tensorboard`, JSON lines to `workdir/metrics.jsonl`.
    start_step / num_steps: the progress bar's range.
    examples_per_step: global batch size, for examples per second.
    model_flops_per_step: analytic model FLOPs of one step (0 = no MFU).
    devices: the devices the step runs on (all processes'), for the MFU's peak.
    tensorboard: write event files.
    progress: draw the tqdm bar.
  """

  def __init__(self, workdir: str | Path, *, start_step: int, num_steps: int, examples_per_step: int,
               model_flops_per_step: float, devices, tensorboard: bool = True, progress: bool = True):
    self.is_writer = jax.process_index() == 0
    self.examples_per_step = examples_per_step
    self.model_flops_per_step = model_flops_per_step
    self.num_devices = len(devices)
    device_kind = devices[0].device_kind
    self.peak_flops = peak_flops_per_device(device_kind)
    if self.peak_flops is None and self.is_writer:
      log.info("MFU not reported: no peak FLOP/s known for device kind %r", device_kind)
    workdir = Path(workdir)
    self._tensorboard = TensorBoardWriter(workdir / "tensorboard") if tensorboard and self.is_writer else None
    self._jsonl = open(workdir / "metrics.jsonl", "a") if self.is_writer else None
    self._bar = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True,
                     disable=not (progress and self.is_writer))
    self._clock: tuple[float, int] | None = None

  def start_clock(self, step: int):
    """Starts timing after `step` completed (call it after the first, compiling step has finished)."""
    self._clock = (time.perf_counter(), step)

  def step_done(self):
    self._bar.update(1)

  def log(self, entries: list[tuple[int, dict]]):
    """Writes the host metrics of several steps (in order); perf/ numbers go with the last one, measured over
    the steps since the previous call."""
    if not entries:
      return
    rows = [(step, {name: float(value) for name, value in metrics.items()}) for step, metrics in entries]
    step, values = rows[-1]
    now = time.perf_counter()
    if self._clock is not None and step > self._clock[1]:
      step_time = (now - self._clock[0]) / (step - self._clock[1])
      values["perf/step_time_s"] = step_time
      values["perf/steps_per_sec"] = 1.0 / step_time
      values["perf/examples_per_sec"] = self.examples_per_step / step_time
      if self.peak_flops and self.model_flops_per_step:
        values["perf/mfu"] = model_flops_utilization(self.model_flops_per_step, step_time, self.peak_flops,
                                                     self.num_devices)
      self._clock = (now, step)
    if not self.is_writer:
      return
    for row_step, row in rows:
      if self._tensorboard is not None:
        self._tensorboard.scalars(row_step, row)
      self._jsonl.write(json.dumps({"step": row_step, **row}) + "\n")
    if self._tensorboard is not None:
      self._tensorboard.flush()
    self._jsonl.flush()
    shown = {k: values[k] for k in ("loss", "grad_norm", "lr", "perf/mfu") if k in values}
    self._bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in shown.items() if math.isfinite(v)},
                          refresh=False)

  def message(self, text: str):
    """A line above the progress bar (process 0), also sent to the log."""
    if self.is_writer and not self._bar.disable:
      self._bar.write(text)
    log.info(text)

  def close(self):
    self._bar.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._jsonl is not None:
      self._jsonl.close()


class ProfileWindow:
  """A `jax.profiler` trace of steps start+1 .. start+num_steps (counted in completed steps) into `logdir`;
  a negative start or zero steps traces nothing."""

  def __init__(self, logdir: str | Path, *, start: int, num_steps: int):
    if num_steps < 0:
      raise ValueError(f"profile num_steps must be >= 0, got {num_steps}")
    self.logdir, self.start, self.stop = Path(logdir), start, start + num_steps
    self.active = False

  def before_step(self, completed: int):
    """Call with the number of completed steps before running the next one."""
    if 0 <= self.start == completed < self.stop:
      jax.profiler.start_trace(str(self.logdir))
      self.active = True

  def after_step(self, completed: int, outputs):
    """Call after a step was dispatched; stops (after its outputs are ready) at the end of the window."""
    if self.active and completed >= self.stop:
      jax.block_until_ready(outputs)
      self.close()
      steps = f"step {self.stop}" if self.stop == self.start + 1 else f"steps {self.start + 1}..{self.stop}"
      log.info("profile of %s written to %s", steps, self.logdir)

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
