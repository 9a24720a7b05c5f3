"""Attention behind one function: `attention(q, k, v, ..., impl=...)`.

Every model calls this seam; `impl` names an implementation from `IMPLEMENTATIONS`
("auto" picks one for the platform and shapes). Today only the XLA reference is
registered; kernels register themselves here.
"""

from planx_jax.kernels.attention.dispatch import IMPLEMENTATIONS, attention, resolve_impl
from planx_jax.kernels.attention.reference import MASK_VALUE, visibility_mask, xla_attention

__all__ = ["IMPLEMENTATIONS", "MASK_VALUE", "attention", "resolve_impl", "visibility_mask", "xla_attention"]
