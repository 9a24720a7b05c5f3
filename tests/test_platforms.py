"""`planx` commands on a machine with libtpu installed but no TPU chip start no TPU backend (no libtpu error line),
and leave platforms the user chose alone."""

import os
import subprocess
import sys

import pytest

from planx_jax.parallel import platforms

_START = "import jax; {skip}print(jax.devices()[0].platform)"
# The test session sets these (conftest) to quiet libtpu; a user's shell has none of them.
_USER_ENV = {k: v for k, v in os.environ.items()
             if k not in ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "JAX_FORCE_TPU_INIT")}


def _start_jax(skip: bool) -> subprocess.CompletedProcess:
  code = _START.format(skip="from planx_jax.parallel.platforms import skip_absent_tpu; skip_absent_tpu(); "
                       if skip else "")
  return subprocess.run([sys.executable, "-c", code], env=_USER_ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(platforms.tpu_chips_on_pci() > 0, reason="this machine has a TPU: libtpu starts for real")
def test_no_libtpu_error_line_without_a_tpu():
  control = _start_jax(skip=False)  # what every command printed before
  assert control.returncode == 0, control.stderr[-2000:]
  assert "TPU_WORKER_HOSTNAMES" in control.stderr, "libtpu no longer probes here: this test shows nothing"
  proc = _start_jax(skip=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "cpu"
  assert "TPU_WORKER_HOSTNAMES" not in proc.stderr and "E0000" not in proc.stderr, proc.stderr


def test_platforms_the_user_chose_are_kept(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert platforms.skip_absent_tpu() is None
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setenv("JAX_FORCE_TPU_INIT", "1")
  assert platforms.skip_absent_tpu() is None
