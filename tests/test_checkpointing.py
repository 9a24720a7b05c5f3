"""Train-state checkpoints: round trip, save interval and retention, fallback past incomplete or corrupted
checkpoints (with a warning), layout mismatches as errors, and the SIGTERM / Ctrl-C guard."""

import gc
import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.train.checkpointing import Checkpointer, PreemptionGuard, _fingerprints
from planx_jax.train.state import new_state

CONFIG_JSON = json.dumps({"stage": "test", "seed": 0})


def make_state(step: int):
  """A TrainState whose every leaf depends on `step`: fp32, bf16, int32, uint32 key data, bool."""
  params = {"dense": {"kernel": jax.random.normal(jax.random.key(step), (64, 64)),  # incompressible bytes
                      "scale": jnp.ones((7,), jnp.bfloat16) * step},
            "table": jnp.arange(12, dtype=jnp.int32).reshape(3, 4) + step}
  opt_state = {"count": jnp.asarray(step, jnp.int32), "mask": jnp.arange(5) < step}
  state = new_state(params, opt_state, seed=step)
  return state.replace(step=jnp.asarray(step, jnp.int32))


def abstract_of(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_same_state(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(directory, steps, *, save_every=1, keep=10, async_save=False):
  with Checkpointer(directory, save_every=save_every, keep=keep, async_save=async_save) as ckpt:
    for step in steps:
      ckpt.save(step, make_state(step), {"next_index": 10 * step}, CONFIG_JSON)
    ckpt.wait_until_finished()


def test_round_trip_async(tmp_path):
  with Checkpointer(tmp_path, save_every=1, keep=3, async_save=True) as ckpt:
    assert ckpt.restore(abstract_of(make_state(0))) is None
    assert ckpt.save(3, make_state(3), {"next_index": 30, "epoch": 1}, CONFIG_JSON, metadata={"run": "a"})
    ckpt.wait_until_finished()
  with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
    step, state, data_state = ckpt.restore(abstract_of(make_state(0)))
  assert step == 3 and data_state == {"next_index": 30, "epoch": 1}
  assert_same_state(state, make_state(3))
  assert json.loads((tmp_path / "3" / "config" / "metadata").read_text()) == json.loads(CONFIG_JSON)
  meta = json.loads((tmp_path / "3" / "meta" / "metadata").read_text())
  assert meta["step"] == 3 and meta["run"] == "a" and meta["process_count"] == 1
  with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
    with pytest.raises(ValueError, match="reserved"):
      ckpt.save(4, make_state(4), {}, CONFIG_JSON, metadata={"leaves": {}})


def test_interval_force_and_keep(tmp_path):
  with Checkpointer(tmp_path, save_every=2, keep=2, async_save=False) as ckpt:
    written = [ckpt.save(s, make_state(s), {}, CONFIG_JSON) for s in range(1, 8)]
    assert written == [False, True, False, True, False, True, False]
    assert ckpt.save(7, make_state(7), {}, CONFIG_JSON, force=True)
    assert not ckpt.save(7, make_state(7), {}, CONFIG_JSON, force=True)  # already there
    assert ckpt.all_steps() == [6, 7]
  with pytest.raises(ValueError, match="save_every"):
    Checkpointer(tmp_path, save_every=0, keep=1)
  with pytest.raises(ValueError, match="keep"):
    Checkpointer(tmp_path, save_every=1, keep=0)


def _array_file(state_dir):
  """The largest TensorStore data file of a state item (the one holding the 64 x 64 kernel)."""
  files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _garbage(path):
  path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _stale_state(step_dir):
  """Replaces the state item with the previous step's: valid files, wrong contents."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


CORRUPTIONS = {
    "missing_commit_marker": lambda d: (d / "commit_success.txt").unlink(),
    "deleted_array_file": lambda d: _array_file(d / "state").unlink(),
    "garbage_array_file": lambda d: _garbage(_array_file(d / "state")),
    "truncated_array_file": lambda d: _truncate(_array_file(d / "state")),
    "stale_state_files": _stale_state,
    "garbage_data_state": lambda d: _garbage(d / "data" / "process_0-of-1.json"),
}


# When one array read fails, Orbax drops the other reads' coroutines unawaited (reported as unraisable).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_latest_falls_back(tmp_path, caplog, corruption):
  save_steps(tmp_path, [1, 2])
  CORRUPTIONS[corruption](tmp_path / "2")
  with caplog.at_level(logging.WARNING, logger="planx.train.checkpoint"):
    with Checkpointer(tmp_path, save_every=1, keep=10) as ckpt:
      step, state, data_state = ckpt.restore(abstract_of(make_state(0)))
      assert step == 1 and data_state == {"next_index": 10}
      assert_same_state(state, make_state(1))
      assert ckpt.all_steps() == [1]
      assert ckpt.save(2, make_state(2), {"next_index": 20}, CONFIG_JSON)  # the step can be written again
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 2" in w and "unreadable" in w for w in warnings), warnings
  assert len(list(tmp_path.glob("2.unreadable-*"))) == 1
  gc.collect()  # the dropped coroutines are reported here, under this test's filter


def test_nothing_readable_is_an_error(tmp_path):
  save_steps(tmp_path, [1, 2])
  for step in ("1", "2"):
    (tmp_path / step / "commit_success.txt").unlink()
  with Checkpointer(tmp_path, save_every=1, keep=10) as ckpt:
    with pytest.raises(ValueError, match="no readable checkpoint.*step 2.*step 1"):
      ckpt.restore(abstract_of(make_state(0)))
  assert (tmp_path / "2").is_dir() and (tmp_path / "1").is_dir()  # nothing moved


def test_layout_mismatch_is_an_error_not_a_fallback(tmp_path):
  save_steps(tmp_path, [1, 2])
  other = make_state(0)
  other = other.replace(params={**other.params, "table": jnp.zeros((4, 4), jnp.int32)})
  with Checkpointer(tmp_path, save_every=1, keep=10) as ckpt:
    with pytest.raises(ValueError, match=r"'table'\] with shape \[3, 4\].*expects \[4, 4\]"):
      ckpt.restore(abstract_of(other))
    extra = make_state(0).replace(params={**make_state(0).params, "bias": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"'bias'\] is missing from the checkpoint"):
      ckpt.restore(abstract_of(extra))
    assert ckpt.all_steps() == [1, 2]


def test_fingerprint_sees_single_changes_and_swaps():
  x = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
  changed = x.at[1, 2, 3].set(np.nextafter(np.float32(23), np.float32(24)))
  swapped = x.at[0, 0, 0].set(x[1, 1, 1]).at[1, 1, 1].set(x[0, 0, 0])
  leaves = [x, changed, swapped, x + 0, x.astype(jnp.bfloat16), x.astype(jnp.bfloat16).at[0, 0, 1].set(1.5),
            x > 3, (x > 3).at[0, 0, 0].set(True)]
  sums = [int(s) for s in _fingerprints(leaves)]
  assert sums[0] == sums[3]
  assert len({sums[0], sums[1], sums[2]}) == 3
  assert sums[4] != sums[5] and sums[6] != sums[7]


def test_preemption_guard_catches_sigterm_and_restores_handlers():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with PreemptionGuard() as guard:
    assert not guard.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested and guard.signal_name == "SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM keeps the request
    assert guard.signal_name == "SIGTERM"
  assert {s: signal.getsignal(s) for s in before} == before


def test_preemption_guard_second_ctrl_c_interrupts():
  with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
