"""Small Flax Linen building blocks shared by the models: RMSNorm and typed einsum
projections whose params carry logical axis names for sharding."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = nn.initializers.Initializer


def dtype_of(name: str) -> jnp.dtype:
  try:
    return jnp.dtype(name)
  except TypeError as err:
    raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from err


# Rematerialisation of scanned layers / blocks by name: what the backward pass may keep from the forward.
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": "nothing_saveable",  # recompute the whole layer
    "dots": "checkpoint_dots",  # keep matmul outputs
    "dots_no_batch": "dots_with_no_batch_dims_saveable",  # keep weight matmuls, recompute attention
}


def check_remat(name: str) -> str:
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; choose one of {sorted(REMAT_POLICIES)}")
  return name


def maybe_remat(module_cls, name: str, static_argnums: tuple[int, ...] = ()):
  """`nn.remat(module_cls)` with the named policy, or `module_cls` itself for "none"."""
  policy = REMAT_POLICIES[check_remat(name)]
  if policy is None:
    return module_cls
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=False,
                  static_argnums=static_argnums)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) in fp32, cast back to the compute dtype, times scale."""

  eps: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


class Einsum(nn.Module):
  """y = einsum(spec, x, kernel) (+ bias) in the compute dtype with fp32 accumulation.

  `kernel_shape`/`kernel_axes` give the kernel's shape and logical axis names
  (`einsum_shape`, if set, is the shape the kernel is reshaped to for the einsum);
  `bias_shape`/`bias_axes` add a bias when set.
  """

  spec: str
  kernel_shape: Sequence[int]
  kernel_axes: Sequence[str]
  bias_shape: Sequence[int] | None = None
  bias_axes: Sequence[str] | None = None
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.normal(0.02)
  out_dtype: jnp.dtype | None = None  # default: the compute dtype
  einsum_shape: Sequence[int] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
        tuple(self.kernel_shape),
        self.param_dtype,
    )
    if self.einsum_shape is not None:
      kernel = kernel.reshape(self.einsum_shape)
    y = jnp.einsum(
        self.spec, x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=jnp.float32
    )
    if self.bias_shape is not None:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes)),
          tuple(self.bias_shape),
          self.param_dtype,
      )
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype if self.out_dtype is None else self.out_dtype)
