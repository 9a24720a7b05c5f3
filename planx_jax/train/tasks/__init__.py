"""The Plan-X training stages (planner SFT, DiT SFT of the base, DiT stage 1, end-to-end) and the RL post-training
stages (planner GRPO / GSPO, DiT Flow-GRPO) as `Task`s, by name."""

from planx_jax.train.tasks.base import Task
from planx_jax.train.tasks.dit_flow_grpo import DiTFlowGRPO
from planx_jax.train.tasks.dit_sft import DiTSFT
from planx_jax.train.tasks.dit_stage1 import DiTStage1
from planx_jax.train.tasks.end_to_end import EndToEnd
from planx_jax.train.tasks.planner_grpo import PlannerGRPO
from planx_jax.train.tasks.planner_sft import PlannerSFT

TASKS = {cls.stage: cls for cls in (PlannerSFT, DiTSFT, DiTStage1, EndToEnd, PlannerGRPO, DiTFlowGRPO)}

__all__ = ["DiTFlowGRPO", "DiTSFT", "DiTStage1", "EndToEnd", "PlannerGRPO", "PlannerSFT", "TASKS", "Task"]
