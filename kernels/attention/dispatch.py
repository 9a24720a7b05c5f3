"""Chooses the attention implementation for `impl` and the current platform."""

import logging

import jax

from planx_jax.kernels.attention.reference import xla_attention

log = logging.getLogger(__name__)

# name -> function with the signature of `reference.xla_attention`.
IMPLEMENTATIONS = {"xla": xla_attention}
_VALID = ("auto", *IMPLEMENTATIONS)


def validate_impl(impl: str) -> str:
  if impl not in _VALID:
    raise ValueError(f"unknown attention_impl {impl!r}; available: {', '.join(_VALID)}")
  return impl


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """The registered implementation `impl` stands for on `platform`."""
  validate_impl(impl)
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  # Only the XLA reference is registered so far; it runs on every platform.
  log.debug("attention auto -> xla on %s", platform)
  return "xla"


def attention(q, k, v, *, impl: str = "auto", **kwargs):
  """Attention via the implementation `impl`; see `reference.xla_attention` for arguments."""
  return IMPLEMENTATIONS[resolve_impl(impl)](q, k, v, **kwargs)
