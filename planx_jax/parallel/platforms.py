"""Which JAX platforms a `planx` command starts: without a TPU chip on this machine, not libtpu's TPU backend.

With the `libtpu` package installed (the test extra installs it for TPU compiles), JAX starts libtpu's TPU backend
on any machine; on one with no TPU chip libtpu probes the Cloud TPU metadata, fails, and prints an `E0000 ...
TPU_WORKER_HOSTNAMES` error line before falling back to the CPU. A newcomer's first command should not start with
an error that is not one. TPU chips are found the way JAX's own Cloud TPU start-up finds them (Google's PCI vendor
id); where there is one, or the user chose platforms (`JAX_PLATFORMS`, `JAX_FORCE_TPU_INIT`), nothing changes and
real TPU errors still show. `planx compile` targets TPU topologies through libtpu without this backend.
"""

import glob
import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger("planx")

GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # TPU chips (and only Google devices) on the PCI bus


def tpu_chips_on_pci() -> int:
  """Google devices on this machine's PCI bus (0 on a machine without TPUs)."""
  count = 0
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      count += Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR_ID
    except OSError:
      continue
  return count


def _nvidia_gpu_usable() -> bool:
  plugin = any(importlib.util.find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
  return plugin and any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0"))


def skip_absent_tpu() -> str | None:
  """Limits JAX to the platforms present when libtpu is installed but no TPU chip is; returns the platforms set
  (None: nothing changed). Call before JAX starts a backend."""
  if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ:
    return None
  if importlib.util.find_spec("libtpu") is None or tpu_chips_on_pci():
    return None
  import jax

  platforms = "cuda,cpu" if _nvidia_gpu_usable() else "cpu"
  jax.config.update("jax_platforms", platforms)
  log.debug("no TPU chip on this machine: JAX platforms %s (libtpu's TPU backend not started)", platforms)
  return platforms
