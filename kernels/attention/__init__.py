"""Attention behind one seam: `attention(q, k, v, ..., impl=...)` and `split_cross_attention(...)`.

Every model calls these; `impl` names an implementation ("auto" picks one for the
platform and shapes). Today only the XLA references are registered; kernels
register themselves in `dispatch`.
"""

from planx_jax.kernels.attention.dispatch import (IMPLEMENTATIONS, attention, resolve_impl, split_cross_attention)
from planx_jax.kernels.attention.reference import (MASK_VALUE, visibility_mask, xla_attention,
                                                   xla_split_cross_attention)

__all__ = ["IMPLEMENTATIONS", "MASK_VALUE", "attention", "resolve_impl", "split_cross_attention", "visibility_mask",
           "xla_attention", "xla_split_cross_attention"]
