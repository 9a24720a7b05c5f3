"""Losses as pure functions of arrays: the planner's masked / chunked NLL (Plan-X Eq. 2).

Flow-matching and RL losses join this package with the DiT and RL issues.
"""

from planx_jax.losses.lm import HEAD_LAYOUTS, LossOutput, chunked_masked_nll, masked_nll, next_token_targets

__all__ = ["HEAD_LAYOUTS", "LossOutput", "chunked_masked_nll", "masked_nll", "next_token_targets"]
