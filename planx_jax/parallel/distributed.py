"""Multi-host start-up: `jax.distributed.initialize` from command-line flags or the environment, with CPU
collectives (gloo) when the processes run on CPUs. Not the mesh (mesh.py)."""

import logging
import os

import jax

ENV_COORDINATOR = "PLANX_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "PLANX_NUM_PROCESSES"
ENV_PROCESS_ID = "PLANX_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run; returns False (and does nothing) for a single process.

  Values come from the arguments, else PLANX_COORDINATOR / PLANX_NUM_PROCESSES / PLANX_PROCESS_ID. On Cloud TPU
  pods none is needed: `jax.distributed.initialize()` finds the pod itself when PLANX_COORDINATOR is "auto".
  """
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
  if not coordinator:
    return False
  if coordinator == "auto":
    jax.distributed.initialize()
    return True
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if num_processes is None or process_id is None:
    raise ValueError(f"a coordinator ({coordinator}) needs the number of processes and this process's id "
                     f"(--num-processes / --process-id or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d joined %s; %d global devices", jax.process_index(), jax.process_count(),
               coordinator, jax.device_count())
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError as err:
    raise ValueError(f"{name} must be an int, got {value!r}") from err
