"""Losses as pure functions of arrays: the planner's masked / chunked NLL (Plan-X Eq. 2) and flow
matching for the DiT (Eq. 4) with its timestep samplers and condition dropout; the RL objectives (GRPO / GSPO
advantages, token log-probs, KL estimators, the clipped policy loss and its aggregations)."""

from planx_jax.losses.flow import (NUM_TRAIN_TIMESTEPS, SIGMA_KINDS, FlowLoss, TimestepSampling, drop_condition,
                                   flow_matching_loss, interpolate, per_frame_sigmas, per_token_sigmas, sample_sigmas,
                                   shift_sigmas, sigma_to_timestep, text_drop_prob, velocity_target, x0_from_velocity)
from planx_jax.losses.lm import HEAD_LAYOUTS, LossOutput, chunked_masked_nll, masked_nll, next_token_targets
from planx_jax.losses.rl import (ADVANTAGE_SCALES, IMPORTANCE_LEVELS, KL_KINDS, LOSS_TYPES, chunked_token_log_probs,
                                 group_advantages, hierarchical_advantages, importance_log_weights, kl_penalty,
                                 policy_loss, token_log_probs)

__all__ = [
    "HEAD_LAYOUTS", "NUM_TRAIN_TIMESTEPS", "SIGMA_KINDS", "FlowLoss", "LossOutput", "TimestepSampling",
    "chunked_masked_nll", "drop_condition", "flow_matching_loss",
    "interpolate", "masked_nll", "next_token_targets", "per_frame_sigmas", "per_token_sigmas", "sample_sigmas",
    "shift_sigmas", "sigma_to_timestep", "text_drop_prob", "velocity_target", "x0_from_velocity",
    "ADVANTAGE_SCALES", "IMPORTANCE_LEVELS", "KL_KINDS", "LOSS_TYPES", "chunked_token_log_probs", "group_advantages",
    "hierarchical_advantages", "importance_log_weights", "kl_penalty", "policy_loss", "token_log_probs",
]
