"""Runs the Pallas attention kernels inside a sharded jitted step: `shard_map` over batch and head mesh axes.

Mosaic kernels must see per-device arrays, so under an active mesh (`jax.set_mesh`) the kernel call is wrapped
in `jax.shard_map` with batch split over the data axes and heads over the tensor axes. Not the mesh itself.
"""

import logging
import math

import jax
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

# Mesh axes (issue 7's names) that split the batch and the heads; axes missing from the mesh are ignored.
BATCH_AXES = ("data", "fsdp")
HEAD_AXES = ("tensor",)


def active_mesh():
  """The mesh set by `jax.set_mesh` (abstract inside jit), or None when there is none or it has one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
    return None
  return mesh


def _axes(mesh, names, *sizes) -> tuple[str, ...] | None:
  """The mesh axes among `names` (size > 1) whose product divides every size in `sizes`; None if none do."""
  axes = tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1)
  if not axes:
    return None
  if any(n % math.prod(mesh.shape[a] for a in axes) for n in sizes):
    return None
  return axes


def batch_axes(mesh, batch: int) -> tuple[str, ...] | None:
  """The mesh axes that split a batch of `batch` rows (None: it stays whole)."""
  return _axes(mesh, BATCH_AXES, batch)


def shard_kernel(fn, mesh, *, batch: int, heads: tuple[int, ...], arg_kinds: tuple[str, ...]):
  """`fn(*args)` under `shard_map` on `mesh`; `arg_kinds` says how each argument is laid out.

  Kinds: "bthd" ([B, L, H, D] activations), "table" ([B or 1, L, D/2] RoPE tables; split over batch only when
  B > 1), "bt" ([B, L] ids / masks), "b" ([B] offsets). Heads are split only when every head count in `heads`
  divides by the head axes; otherwise they stay whole (logged). The output is [B, T, N, D].
  """
  batch_split = batch_axes(mesh, batch)
  head_axes = _axes(mesh, HEAD_AXES, *heads)
  wanted = [a for a in HEAD_AXES if a in mesh.shape and mesh.shape[a] > 1]
  if wanted and head_axes is None:
    log.info("attention kernel: heads %s do not divide mesh axes %s; heads replicated inside shard_map",
             heads, wanted)

  def spec(kind, arg):
    if kind == "bthd":
      return P(batch_split, None, head_axes, None)
    if kind == "table":
      return P(batch_split if arg.shape[0] > 1 else None, None, None)
    if kind == "bt":
      return P(batch_split, None)
    return P(batch_split)

  def call(*args):
    in_specs = tuple(spec(kind, a) for kind, a in zip(arg_kinds, args))
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(batch_split, None, head_axes, None),
                         check_vma=False)(*args)

  return call
