"""Mesh, logical sharding rules, sharding printouts and multi-host start-up (AOT compile reports: `planx_jax.aot`)."""

from planx_jax.parallel.mesh import MESH_AXES, build_mesh, data_parallel_size, describe_mesh, resolve_axis_sizes
from planx_jax.parallel.rules import (DEFAULT_RULES, activation_sharding, batch_sharding, constrain, describe_shardings,
                                      make_rules, mesh_spec, replicated, tree_shardings)

__all__ = [
    "DEFAULT_RULES", "MESH_AXES", "activation_sharding", "batch_sharding", "constrain", "build_mesh", "data_parallel_size", "describe_mesh",
    "describe_shardings", "make_rules", "mesh_spec", "replicated", "resolve_axis_sizes", "tree_shardings",
]
