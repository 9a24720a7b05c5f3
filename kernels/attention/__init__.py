"""Attention behind one seam: `attention(q, k, v, ..., impl=...)` and `split_cross_attention(...)`.

Every model calls these; `impl` names an implementation ("auto" picks one for the platform and shapes): the XLA
references, the Pallas TPU kernel with fused RoPE (or its interpret mode), and jax.nn / cuDNN on GPU.
"""

from planx_jax.kernels.attention.dispatch import (IMPLEMENTATIONS, attention, resolve_impl, split_cross_attention,
                                                  validate_impl)
from planx_jax.kernels.attention.pallas_attention import (BlockSizes, default_block_sizes, pallas_attention,
                                                          pallas_split_cross_attention)
from planx_jax.kernels.attention.reference import (MASK_VALUE, visibility_mask, xla_attention,
                                                   xla_split_cross_attention)

__all__ = ["IMPLEMENTATIONS", "MASK_VALUE", "BlockSizes", "attention", "default_block_sizes", "pallas_attention",
           "pallas_split_cross_attention", "resolve_impl", "split_cross_attention", "validate_impl",
           "visibility_mask", "xla_attention", "xla_split_cross_attention"]
