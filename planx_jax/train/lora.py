"""LoRA on attention / MLP projection kernels of the planner and the DiT, as a separate param tree merged into
the base weights inside the step (W + alpha / r * A B). Not the optimizer's choice of trainable leaves (step.py).

A kernel's input and output axes follow its logical names: a kernel whose first (non-"layers") axis is "embed"
reads the model width (q/k/v, gate/up, ffn_1); otherwise its last axis is "embed" and it writes the width
(o, down, ffn_2). A is [(layers,) in, r] (normal, std 1/r), B is [(layers,) r, out] (zeros): training starts
from the base model exactly.
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

TARGET_MODULES = {
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down", "ffn_1", "ffn_2"),
}


def _module_names(targets: Sequence[str]) -> set[str]:
  unknown = sorted(set(targets) - set(TARGET_MODULES))
  if unknown or not targets:
    raise ValueError(f"lora.targets must be a non-empty subset of {sorted(TARGET_MODULES)}, got {list(targets)}")
  return {name for t in targets for name in TARGET_MODULES[t]}


def _split(logical: P, shape) -> tuple[int, int, int] | None:
  """(number of leading layer axes, input size, output size) of a projection kernel, None if it is not one."""
  names = tuple(logical) + (None,) * (len(shape) - len(logical))
  lead = 1 if names and names[0] == "layers" else 0
  body, dims = names[lead:], tuple(shape[lead:])
  if len(body) < 2:
    return None
  if body[0] == "embed":
    return lead, dims[0], math.prod(dims[1:])
  if body[-1] == "embed":
    return lead, math.prod(dims[:-1]), dims[-1]
  return None


def _targets(abstract_params, logical_axes, targets):
  """[(path tuple of keys, logical spec, shape)] of the kernels LoRA adapts."""
  names = _module_names(targets)
  flat_logical = dict(jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=lambda x: isinstance(x, P))[0])
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    keys = tuple(getattr(k, "key", None) for k in path)
    if len(keys) >= 2 and keys[-1] == "kernel" and keys[-2] in names and _split(flat_logical[path], leaf.shape):
      found.append((keys, flat_logical[path], leaf.shape, leaf.dtype))
  if not found:
    raise ValueError(f"LoRA found no {list(targets)} projection kernels in the params")
  return found


def _nest(entries: dict[tuple, Any]) -> dict:
  tree: dict = {}
  for keys, value in entries.items():
    node = tree
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return tree


def init_lora(rng, abstract_params, logical_axes, *, rank: int, targets: Sequence[str]) -> dict:
  """LoRA factors {path...: {"a": [(L,) in, r], "b": [(L,) r, out]}} for every targeted kernel (fp32)."""
  if rank < 1:
    raise ValueError(f"lora.rank must be >= 1 to build LoRA params, got {rank}")
  entries = {}
  found = _targets(abstract_params, logical_axes, targets)
  for i, (keys, logical, shape, _) in enumerate(found):
    lead, n_in, n_out = _split(logical, shape)
    layers = tuple(shape[:lead])
    a = jax.random.normal(jax.random.fold_in(rng, i), layers + (n_in, rank), jnp.float32) / rank
    entries[keys[:-1]] = {"a": a, "b": jnp.zeros(layers + (rank, n_out), jnp.float32)}
  return _nest(entries)


def lora_logical_axes(abstract_params, logical_axes, *, rank: int, targets: Sequence[str]) -> dict:
  """Logical PartitionSpecs of `init_lora`'s tree: A's input axis keeps the kernel's name when it is one axis."""
  entries = {}
  for keys, logical, shape, _ in _targets(abstract_params, logical_axes, targets):
    lead, _, _ = _split(logical, shape)
    names = tuple(logical) + (None,) * (len(shape) - len(logical))
    layer = ("layers",) if lead else ()
    in_name = names[lead] if names[lead] == "embed" else None
    entries[keys[:-1]] = {"a": P(*layer, in_name, "lora_rank"), "b": P(*layer, "lora_rank", None)}
  return _nest(entries)


def merge_lora(params: dict, lora: dict, *, scale: float) -> dict:
  """params with W + scale * A B on every kernel that has LoRA factors (same tree, same dtypes)."""
  def merge(node, factors):
    if isinstance(factors, dict) and set(factors) == {"a", "b"}:
      kernel = node["kernel"]
      delta = jnp.einsum("...ir,...ro->...io", factors["a"], factors["b"])  # [(L,) in, out]
      return {**node, "kernel": kernel + (scale * delta).reshape(kernel.shape).astype(kernel.dtype)}
    out = dict(node)
    for key, sub in factors.items():
      if key not in node:
        raise ValueError(f"LoRA factors for {key!r} have no matching params")
      out[key] = merge(node[key], sub)
    return out

  return merge(params, lora)
