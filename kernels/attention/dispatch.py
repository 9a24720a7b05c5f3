"""Chooses the attention implementation for `impl` and the current platform.

Two entry points share one registry of implementation names: `attention`
(self-attention, causal or full, GQA) and `split_cross_attention` (Plan-X's
text + semantic segments under one softmax).
"""

import logging

import jax

from planx_jax.kernels.attention.reference import xla_attention, xla_split_cross_attention

log = logging.getLogger(__name__)

# name -> function with the signature of the matching `reference.xla_*` function.
IMPLEMENTATIONS = {"xla": xla_attention}
SPLIT_CROSS_IMPLEMENTATIONS = {"xla": xla_split_cross_attention}
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


def split_cross_attention(q, q_rot, k_text, v_text, k_sem, v_sem, *, impl: str = "auto", **kwargs):
  """Plan-X split cross-attention via `impl`; see `reference.xla_split_cross_attention`."""
  return SPLIT_CROSS_IMPLEMENTATIONS[resolve_impl(impl)](q, q_rot, k_text, v_text, k_sem, v_sem, **kwargs)
