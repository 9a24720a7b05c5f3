"""Param trees from a model's boxed `init` (Flax variables with logical-axis metadata): plain params,
shapes without allocation, counts and logical partition specs. Knows no model."""

from typing import Callable

import flax.linen as nn
import jax

BoxedInit = Callable[[jax.Array], dict]  # rng -> variables from `Module.init` (params boxed with axis names)


def init_params(boxed_init: BoxedInit, rng: jax.Array) -> dict:
  """Random params as a plain nested dict of arrays."""
  return nn.unbox(boxed_init(rng))["params"]


def abstract_params(boxed_init: BoxedInit) -> dict:
  """Param tree of `jax.ShapeDtypeStruct`, without allocating anything."""
  return nn.unbox(jax.eval_shape(boxed_init, jax.random.key(0)))["params"]


def param_count(boxed_init: BoxedInit) -> int:
  return sum(x.size for x in jax.tree.leaves(abstract_params(boxed_init)))


def param_logical_axes(boxed_init: BoxedInit) -> dict:
  """Param tree of `PartitionSpec`s over logical axis names ("layers", "embed", "heads", ...)."""
  return nn.get_partition_spec(jax.eval_shape(boxed_init, jax.random.key(0)))["params"]
