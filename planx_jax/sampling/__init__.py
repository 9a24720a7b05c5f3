"""Planner sampling: logits processing, the plan grammar and KV-cache decoding.

Flow-matching samplers for the DiT will live here too; nothing in this package trains.
"""

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
    "CODES_PER_KEYFRAME", "DEFAULT_STOP", "KEYFRAME_LEN", "PAD_ID", "GenerateOutput", "PaddedPrompts",
    "PlanGrammar", "PlanSamples", "SamplingConfig", "apply_allowed", "apply_temperature", "apply_top_k",
    "apply_top_p", "check_context", "filter_logits", "generate", "pad_prompts", "plan_to_codes",
    "sample_plans", "sample_token", "validate_plan",
]
