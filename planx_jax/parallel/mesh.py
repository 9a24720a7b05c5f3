"""The device mesh over Plan-X's four axes ("data", "fsdp", "context", "tensor") from config sizes.

Sizes may use -1 for "the rest of the devices"; an optional DCN (multi-slice) size per axis builds a hybrid mesh.
Not the sharding rules (see `rules.py`).
"""

import logging
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Axis sizes with at most one -1 filled in, checked to multiply to `num_devices`.

  Missing axes default to 1. Raises ValueError naming the axis or the product that does not fit.
  """
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {list(MESH_AXES)}")
  resolved = {}
  for axis in MESH_AXES:
    size = sizes.get(axis, 1)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{axis} must be a positive int or -1 (the rest of the devices), got {size!r}")
    resolved[axis] = int(size)
  fill = [axis for axis, size in resolved.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {fill}")
  known = math.prod(size for size in resolved.values() if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh sizes {resolved} leave no whole size for mesh.{fill[0]}: {num_devices} devices are "
                       f"not divisible by the product of the other axes ({known})")
    resolved[fill[0]] = num_devices // known
  elif known != num_devices:
    raise ValueError(f"mesh sizes {resolved} multiply to {known}, but there are {num_devices} devices; use -1 on "
                     "one axis for the rest")
  return resolved


def build_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None,
               dcn_sizes: Mapping[str, int] | None = None) -> Mesh:
  """A `Mesh` over MESH_AXES with the given (per-slice) sizes.

  Args:
    sizes: axis -> size within a slice (ICI); -1 for the rest of a slice's devices.
    devices: the devices (default `jax.devices()`); TPU-topology devices work for AOT compiles.
    dcn_sizes: axis -> number of slices along that axis (multi-slice over DCN); their product is the number of
      slices. None or all ones: a single slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = {axis: 1 for axis in MESH_AXES}
  for axis, size in (dcn_sizes or {}).items():
    if axis not in MESH_AXES:
      raise ValueError(f"unknown DCN mesh axis {axis!r}; the mesh axes are {list(MESH_AXES)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"mesh DCN size of {axis!r} must be a positive int, got {size!r}")
    dcn[axis] = int(size)
  num_slices = math.prod(dcn.values())
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices cannot form {num_slices} slices (dcn sizes {dcn})")
  ici = resolve_axis_sizes(sizes, len(devices) // num_slices)
  shape = tuple(ici[a] for a in MESH_AXES)
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(shape, tuple(dcn[a] for a in MESH_AXES), devices)
  else:
    try:
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError) as err:
      logging.warning("mesh: no topology-aware device order for shape %s (%s); using the device list order", shape,
                      err)
      grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch shards: the product of the "data" and "fsdp" axes."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def describe_mesh(mesh: Mesh) -> str:
  sizes = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in mesh.axis_names)
  return f"mesh ({sizes}) over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"
