"""Codebook lookup behind one seam: `codebook_argmax(z, codebook, ..., impl=...)` for TA-Tok's quantizer.

`impl` names an implementation ("auto" picks one); today only the streaming XLA reference is registered.
Sampling (`codebook_sample`) and the dense reference (`dense_codebook_argmax`) come from `reference`.
"""

from planx_jax.kernels.codebook.reference import (codebook_sample, dense_codebook_argmax,
                                                  streaming_codebook_argmax)

# name -> function with the signature of `reference.streaming_codebook_argmax`.
IMPLEMENTATIONS = {"xla": streaming_codebook_argmax}
_VALID = ("auto", *IMPLEMENTATIONS)


def resolve_impl(impl: str) -> str:
  """The registered implementation `impl` stands for ("auto" -> "xla", the only one so far)."""
  if impl not in _VALID:
    raise ValueError(f"unknown codebook impl {impl!r}; available: {', '.join(_VALID)}")
  return "xla" if impl == "auto" else impl


def codebook_argmax(z, codebook, *, bias=None, tile_size: int = 4096, impl: str = "xla"):
  """int32 [...] index of the best code for each z [..., D], computed by `impl`.

  Arguments, the tie rule (smallest index wins) and the NaN rule: `reference.streaming_codebook_argmax`.
  """
  return IMPLEMENTATIONS[resolve_impl(impl)](z, codebook, bias=bias, tile_size=tile_size)


__all__ = ["IMPLEMENTATIONS", "codebook_argmax", "codebook_sample", "dense_codebook_argmax", "resolve_impl",
           "streaming_codebook_argmax"]
