"""Train-state checkpoints with Orbax: async save every N steps, keep the last K, resume from the latest complete
one (falling back past unreadable ones), and a SIGTERM / Ctrl-C guard. Not model export (see `Experiment.export`).

A step directory `<dir>/<step>/` holds four Orbax items: `state` (the train-state pytree, sharded arrays written
collectively), `data` (each process's data iterator state, `process_<i>-of-<n>.json`), `config` (the experiment
config) and `meta` (step, time, process count and a fingerprint of every state leaf). Orbax writes it under a
temporary name and commits it with `commit_success.txt`; a directory without that marker is incomplete.
"""

import dataclasses
import json
import logging
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger("planx.train.checkpoint")

COMMIT_MARKER = "commit_success.txt"
ITEMS = ("state", "data", "config", "meta")
RESERVED_META = ("step", "time", "process_count", "jax_version", "leaves")


class ProcessJsonHandler(ocp.CheckpointHandler):
  """Orbax handler for one JSON dict per process (the data iterator state differs between hosts)."""

  def save(self, directory: epath.Path, args: "ProcessJsonSave"):
    (directory / _process_file()).write_text(json.dumps(args.item))

  def restore(self, directory: epath.Path, args: "ProcessJsonRestore | None" = None) -> dict:
    path = directory / _process_file()
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
  item: dict


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


def _process_file() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """Position-weighted wrapping sum of the leaf's bits: uint32 [], identical for identical contents."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize >= 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., itemsize / 4] for 64-bit types
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)  # row-major position, built without reshaping a sharded array
  stride = 1
  for axis in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(stride % 2**32)
    stride *= bits.shape[axis]
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> list[jax.Array]:
  return [_leaf_fingerprint(x) for x in leaves]


def _leaf_table(state: Any) -> dict[str, dict]:
  """{path: {shape, dtype, fingerprint}} of every leaf of a concrete state."""
  flat = jax.tree_util.tree_leaves_with_path(state)
  by_devices: dict[frozenset, list[int]] = {}  # one jit call per device set (restored leaves are committed)
  for i, (_, leaf) in enumerate(flat):
    by_devices.setdefault(frozenset(leaf.sharding.device_set), []).append(i)
  sums = [0] * len(flat)
  for indices in by_devices.values():
    for i, value in zip(indices, jax.device_get(_fingerprints([flat[i][1] for i in indices]))):
      sums[i] = value
  return {jax.tree_util.keystr(path): {"shape": list(leaf.shape), "dtype": str(leaf.dtype), "fingerprint": int(s)}
          for (path, leaf), s in zip(flat, sums)}


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict


class UnreadableCheckpoint(Exception):
  """A step directory that is incomplete or whose contents do not read back as saved."""


class Checkpointer:
  """Saves and restores train state + data iterator state + config under `directory` (every process calls it).

  Args:
    directory: the checkpoint root (local path or a URL Orbax understands, e.g. gs://).
    save_every: `save` writes only at steps divisible by this (unless forced).
    keep: how many of the newest checkpoints to keep.
    async_save: write in a background thread after the arrays are copied to host.
  """

  def __init__(self, directory, *, save_every: int, keep: int, async_save: bool = True):
    if save_every < 1:
      raise ValueError(f"checkpoint save_every must be >= 1, got {save_every}")
    if keep < 1:
      raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
    self.directory = epath.Path(directory)
    policies = ocp.checkpoint_managers
    save_policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(save_every),
                                          policies.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(save_decision_policy=save_policy, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True on every process at the step where all hosts agreed to stop after a preemption notice (multi-host
    jobs with JAX's preemption service); call it at every step. Always False for a single process."""
    return self._manager.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    """True when `save(step, ...)` would write (interval reached, or all hosts reached a preemption point)."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, data_state: dict, config_json: str, *, force: bool = False,
           metadata: dict | None = None) -> bool:
    """Starts writing `state` (a pytree of jax arrays), this process's `data_state` and the config at `step`.

    `data_state` must be the iterator state after the batch of `step` was drawn. Returns whether a save
    started; a step already saved is not written again.
    """
    clash = sorted(set(metadata or {}) & set(RESERVED_META))
    if clash:
      raise ValueError(f"checkpoint metadata keys {clash} are reserved ({list(RESERVED_META)})")
    if step in self._manager.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    meta = {**(metadata or {}), "step": step, "time": time.time(), "process_count": jax.process_count(),
            "jax_version": jax.__version__, "leaves": _leaf_table(state)}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ProcessJsonSave(data_state),
                              config=ocp.args.JsonSave(json.loads(config_json)), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=True)

  def restore(self, abstract_state: Any) -> Restored | None:
    """The newest checkpoint that reads back complete and intact, restored into `abstract_state` (a pytree of
    jax.ShapeDtypeStruct with shardings), or None when the directory holds no checkpoint.

    Newer unreadable checkpoints are logged and moved aside to `<step>.unreadable-<time>` so that training
    can write those steps again. A checkpoint of a different state layout (paths, shapes) or process count is
    an error, not a fallback.
    """
    self.wait_until_finished()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        restored = self._restore_step(step, abstract_state)
        error = None
      except UnreadableCheckpoint as err:
        restored, error = None, err
      if _all_processes_ok(error is None):
        self._move_aside([s for s, _ in failures])
        return restored
      error = error or UnreadableCheckpoint("another process could not read it")
      log.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one", step, self.directory,
                  error)
      failures.append((step, error))
    if failures:
      listed = "; ".join(f"step {s}: {e}" for s, e in failures)
      raise ValueError(f"no readable checkpoint in {self.directory} ({listed}); move the directory away to "
                       "start from scratch")
    return None

  def _restore_step(self, step: int, abstract_state: Any) -> Restored:
    step_dir = self.directory / str(step)
    if not (step_dir / COMMIT_MARKER).exists():
      raise UnreadableCheckpoint(f"{step_dir} has no {COMMIT_MARKER} (the save did not finish)")
    meta = self._read(step, meta=ocp.args.JsonRestore()).meta
    _check_compatible(step_dir, meta, abstract_state)
    restored = self._read(step, state=ocp.args.StandardRestore(abstract_state), data=ProcessJsonRestore())
    stored = meta["leaves"]
    for path, entry in _leaf_table(restored.state).items():
      if entry["dtype"] == stored[path]["dtype"] and entry["fingerprint"] != stored[path]["fingerprint"]:
        raise UnreadableCheckpoint(f"state leaf {path} does not match the fingerprint written with it (corrupted data)")
    return Restored(step, restored.state, restored.data)

  def _read(self, step: int, **items):
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # Orbax / TensorStore / JSON raise many types for damaged files
      raise UnreadableCheckpoint(f"{type(err).__name__}: {_first_line(err)}") from err

  def _move_aside(self, steps: list[int]):
    if steps and jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        target = self.directory / f"{step}.unreadable-{stamp}"
        (self.directory / str(step)).rename(target)
        log.warning("moved unreadable checkpoint step %d to %s", step, target)
    if steps:
      multihost_utils.sync_global_devices("planx_checkpoint_move_aside")
      self._manager.reload()

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc):
    self.close()


def _check_compatible(step_dir, meta: dict, abstract_state: Any):
  if meta.get("process_count") != jax.process_count():
    raise ValueError(f"checkpoint {step_dir} was written by {meta.get('process_count')} processes, this run has "
                     f"{jax.process_count()}: its per-process data iterator states cannot be matched")
  stored = meta.get("leaves")
  if not isinstance(stored, dict):
    raise UnreadableCheckpoint(f"{step_dir}/meta has no leaf table")
  wanted = {jax.tree_util.keystr(p): list(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  for path in sorted(set(stored) | set(wanted)):
    if path not in stored or path not in wanted:
      where = "the checkpoint" if path not in stored else "this run's train state"
      raise ValueError(f"checkpoint {step_dir} does not match this run's train state: {path} is missing from "
                       f"{where}")
    if stored[path]["shape"] != wanted[path]:
      raise ValueError(f"checkpoint {step_dir} holds {path} with shape {stored[path]['shape']}, this run's "
                       f"train state expects {wanted[path]}")


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))


def _first_line(err: Exception) -> str:
  text = str(err).strip()
  return text.splitlines()[0][:300] if text else repr(err)


class PreemptionGuard:
  """Turns SIGTERM and the first Ctrl-C into a request to save and stop at the next step boundary.

  With several processes the signals are left to JAX's preemption service (hosts must stop at the same step:
  see `Checkpointer.reached_preemption`). A second Ctrl-C raises KeyboardInterrupt at once.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    if not self.requested:
      self.signal_name = signal.Signals(signum).name
      log.warning("received %s: saving a checkpoint after the current step, then stopping", self.signal_name)

  def __enter__(self) -> "PreemptionGuard":
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
      return self
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
