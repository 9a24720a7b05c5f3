"""RL post-training: rollouts of the planner (GRPO / GSPO) and the DiT (Flow-GRPO), the TempAct planner-executor
hierarchy. The environment with verifiable rewards is `planx_jax.world.environment`; the losses are `planx_jax.losses.rl`,
the SDE sampler `planx_jax.sampling.flow_sde`, the rewards `planx_jax.rewards`."""

# Importing the package registers the "rollout" batch source and the TempAct experiment in `train.registry`.
from planx_jax.rl import experiment, hierarchy

__all__ = ["experiment", "hierarchy"]
