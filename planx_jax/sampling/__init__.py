"""Sampling: the planner's logits processing, plan grammar and KV-cache decoding; the DiT's flow
samplers (Euler, UniPC) with CFG and first-frame conditioning, and the SDE sampler with log-probs that RL
(Flow-GRPO) rolls out with. Nothing in this package trains."""

from planx_jax.sampling.flow_sampler import SOLVERS, guided_velocity, sample_flow
from planx_jax.sampling.flow_sde import (SDE_KINDS, SDEStep, SDETrajectory, gaussian_log_prob, mean_kl,
                                         ratio_norm_log_ratio, sample_sde, sde_step, sde_window)
from planx_jax.sampling.flow_schedulers import (UNIPC_ORDER, UniPCCoefficients, UniPCState, euler_sigmas, euler_step,
                                                unipc_coefficients, unipc_init, unipc_sigmas, unipc_step)
from planx_jax.sampling.logits_processing import (
    SamplingConfig,
    apply_allowed,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    filter_logits,
    sample_token,
)
from planx_jax.sampling.plan_grammar import (
    CODES_PER_KEYFRAME,
    KEYFRAME_LEN,
    PlanGrammar,
    plan_to_codes,
    validate_plan,
)
from planx_jax.sampling.planner_decode import (
    DEFAULT_STOP,
    PAD_ID,
    GenerateOutput,
    PaddedPrompts,
    PlanSamples,
    check_context,
    generate,
    pad_prompts,
    sample_plans,
)

__all__ = [
    "SOLVERS", "UNIPC_ORDER", "UniPCCoefficients", "UniPCState", "euler_sigmas", "euler_step", "sample_flow",
    "unipc_coefficients", "unipc_init", "unipc_sigmas", "unipc_step",
    "CODES_PER_KEYFRAME", "DEFAULT_STOP", "KEYFRAME_LEN", "PAD_ID", "GenerateOutput", "PaddedPrompts",
    "PlanGrammar", "PlanSamples", "SamplingConfig", "apply_allowed", "apply_temperature", "apply_top_k",
    "apply_top_p", "check_context", "filter_logits", "generate", "pad_prompts", "plan_to_codes",
    "sample_plans", "sample_token", "validate_plan",
    "SDE_KINDS", "SDEStep", "SDETrajectory", "gaussian_log_prob", "guided_velocity", "mean_kl",
    "ratio_norm_log_ratio", "sample_sde", "sde_step", "sde_window",
]
