"""Codebook lookup behind one seam: `codebook_argmax(z, codebook, ..., impl=...)` for TA-Tok's quantizer.

`impl` names an implementation: "xla" (streaming reference), "pallas" (fused Mosaic kernel, TPU only),
"pallas_interpret" (that kernel interpreted, any backend) or "auto". Sampling stays in `reference`.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec as P

from planx_jax.kernels.attention.sharding import active_mesh, batch_axes
from planx_jax.kernels.codebook.pallas_tpu import BLOCK_ROWS, pallas_codebook_argmax, plan_blocks
from planx_jax.kernels.codebook.reference import (codebook_sample, dense_codebook_argmax,
                                                  streaming_codebook_argmax)

log = logging.getLogger(__name__)

# name -> function with the signature of `reference.streaming_codebook_argmax`.
IMPLEMENTATIONS = {
    "xla": streaming_codebook_argmax,
    "pallas": functools.partial(pallas_codebook_argmax, interpret=False),
    "pallas_interpret": functools.partial(pallas_codebook_argmax, interpret=True),
}
_VALID = ("auto", *IMPLEMENTATIONS)


def validate_impl(impl: str) -> None:
  """Raises ValueError unless `impl` is "auto" or a registered name (no backend is touched: for configs)."""
  if impl not in _VALID:
    raise ValueError(f"unknown codebook impl {impl!r}; available: {', '.join(_VALID)}")


def resolve_impl(impl: str) -> str:
  """The registered implementation `impl` stands for: "auto" is "pallas" on a TPU backend, else "xla"."""
  validate_impl(impl)
  if impl != "auto":
    return impl
  return "pallas" if jax.default_backend() == "tpu" else "xla"


def choose_impl(impl: str, z, codebook, tile_size: int) -> str:
  """The implementation `codebook_argmax` runs for these inputs.

  "auto" is "pallas" when the backend is TPU and the kernel's block plan takes these shapes and tile_size,
  else "xla", logged at INFO with the reason.
  """
  validate_impl(impl)
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend != "tpu":
    log.info("codebook_argmax impl 'auto' -> 'xla': the Pallas kernel compiles for TPU only, backend is %r",
             backend)
    return "xla"
  if np.ndim(z) < 1 or np.ndim(codebook) != 2:
    return "pallas"  # malformed inputs: the kernel's own checks name them
  num_rows, (num_codes, width) = int(np.prod(np.shape(z)[:-1])), np.shape(codebook)
  try:
    plan_blocks(num_rows, num_codes, width, jnp.dtype(jnp.result_type(codebook)).itemsize, block_rows=BLOCK_ROWS,
                tile_size=tile_size, interpret=False)
  except ValueError as error:
    log.info("codebook_argmax impl 'auto' -> 'xla': the Pallas kernel cannot take these blocks (%s)", error)
    return "xla"
  return "pallas"


def codebook_argmax(z, codebook, *, bias=None, tile_size: int = 4096, impl: str = "xla"):
  """int32 [...] index of the best code for each z [..., D], computed by `impl`.

  Arguments, the tie rule (smallest index wins) and the NaN rule: `reference.streaming_codebook_argmax`;
  every implementation returns the same indices. `tile_size` is the most codebook rows scored per step.
  """
  name = choose_impl(impl, z, codebook, tile_size)
  fn = functools.partial(IMPLEMENTATIONS[name], tile_size=tile_size)
  mesh = active_mesh() if name.startswith("pallas") else None
  if mesh is None:
    return fn(z, codebook, bias=bias)
  # Under a mesh the Mosaic kernel needs per-device rows: split the flattened rows over the batch axes.
  flat = jnp.reshape(z, (-1, np.shape(z)[-1]))  # [N, D]
  axes = batch_axes(mesh, flat.shape[0])
  if axes is None:
    log.info("codebook_argmax: %d rows do not divide the mesh batch axes; rows replicated in shard_map",
             flat.shape[0])
  bias = jnp.zeros((np.shape(codebook)[0],), jnp.float32) if bias is None else bias
  out = jax.shard_map(lambda z_, c_, b_: fn(z_, c_, bias=b_), mesh=mesh, in_specs=(P(axes, None), P(), P()),
                      out_specs=P(axes), check_vma=False)(flat, codebook, bias)  # [N]
  return out.reshape(np.shape(z)[:-1])


__all__ = ["IMPLEMENTATIONS", "choose_impl", "codebook_argmax", "codebook_sample", "dense_codebook_argmax",
           "pallas_codebook_argmax", "resolve_impl", "streaming_codebook_argmax", "validate_impl"]
