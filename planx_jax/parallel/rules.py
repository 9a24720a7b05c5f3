"""Logical axis names -> mesh axes: one rules table, param / batch shardings from it, and a printout.

Models name their param axes ("embed", "heads", ...) and activation axes ("act_batch", ...); this table is the
only place that maps them to the mesh. Not the mesh itself (see `mesh.py`).
"""

import logging
import math
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from planx_jax.parallel.mesh import MESH_AXES

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# FSDP shards every param along its model width; tensor parallelism splits heads / MLP / vocab; the batch goes
# over data and fsdp; the sequence over context.
DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", "context"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
)


def make_rules(overrides: Iterable[Sequence[Any]] = ()) -> Rules:
  """DEFAULT_RULES with (logical name, mesh axes) pairs replaced or added; mesh axes must be MESH_AXES names."""
  rules = dict(DEFAULT_RULES)
  for entry in overrides:
    if len(entry) != 2 or not isinstance(entry[0], str):
      raise ValueError(f"a sharding rule must be (logical name, mesh axis | [mesh axes] | None), got {entry!r}")
    name, axes = entry
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"sharding rule for {name!r} names mesh axis {axis!r}; mesh axes are {list(MESH_AXES)}")
    rules[name] = axes
  return tuple(rules.items())


def mesh_spec(logical: P, rules: Rules) -> P:
  """A PartitionSpec over logical names -> one over mesh axes; unknown names are an error."""
  table = dict(rules)
  out, used = [], set()
  for name in logical:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    axes = table[name]
    axes = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    axes = tuple(a for a in axes if a not in used)  # a mesh axis shards at most one dimension
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh, where: str, notes: list[str]) -> P:
  """Drops mesh axes from dimensions they do not divide (size-1 axes are dropped silently)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    if axes and dim % math.prod(mesh.shape[a] for a in axes):
      notes.append(f"{where}: dim {dim} is not divisible by mesh axes {axes} "
                   f"({math.prod(mesh.shape[a] for a in axes)}); replicated on that dim")
      axes = ()
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def tree_shardings(logical_tree: Any, abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of arrays from its tree of logical PartitionSpecs.

  A dimension a mesh axis does not divide is replicated instead, and the log says which (never silently).
  """
  notes: list[str] = []
  flat_logical = jax.tree_util.tree_flatten_with_path(logical_tree, is_leaf=lambda x: isinstance(x, P))[0]
  flat_abstract, treedef = jax.tree_util.tree_flatten(abstract_tree)
  if len(flat_logical) != len(flat_abstract):
    raise ValueError(f"logical axes tree has {len(flat_logical)} leaves, the array tree {len(flat_abstract)}")
  out = []
  for (path, logical), arr in zip(flat_logical, flat_abstract):
    where = jax.tree_util.keystr(path)
    if len(logical) > len(arr.shape):
      raise ValueError(f"{where}: logical axes {logical} have more entries than the shape {arr.shape}")
    out.append(NamedSharding(mesh, _fit(mesh_spec(logical, rules), arr.shape, mesh, where, notes)))
  for note in notes:
    logging.warning("sharding: %s", note)
  return jax.tree_util.tree_unflatten(treedef, out)


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Leading (batch) dim over the rules' act_batch axes, the rest replicated."""
  axes = dict(rules)["act_batch"]
  return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe_shardings(tree: Any, shardings: Any) -> str:
  """One line per leaf: path, shape, dtype, mesh PartitionSpec and the per-device shard shape."""
  lines = []
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, arr), sharding in zip(flat, jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(arr.shape)
    lines.append(f"{jax.tree_util.keystr(path):<70} {str(tuple(arr.shape)):<24} {np.dtype(arr.dtype).name:<9} "
                 f"{str(sharding.spec):<40} shard {tuple(shard)}")
  return "\n".join(lines)


# The (mesh, rules) that `constrain` applies while a train step is traced; None outside (a no-op then).
_ACTIVE: list[tuple[Mesh, Rules]] = []


class activation_sharding:
  """Context manager: inside it, `constrain` pins activations to the mesh through the rules table."""

  def __init__(self, mesh: Mesh, rules: Rules):
    self.entry = (mesh, rules)

  def __enter__(self):
    _ACTIVE.append(self.entry)
    return self

  def __exit__(self, *exc):
    _ACTIVE.pop()


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` of an activation by logical names (e.g. ("act_batch", "act_len", "act_embed")).

  A no-op outside `activation_sharding`; dimensions a mesh axis does not divide stay unconstrained on that axis.
  """
  if not _ACTIVE:
    return x
  mesh, rules = _ACTIVE[-1]
  spec = _fit(mesh_spec(P(*logical), rules), x.shape, mesh, "activation", [])
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
