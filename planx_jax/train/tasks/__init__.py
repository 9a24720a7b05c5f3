"""The Plan-X training stages (planner SFT, DiT SFT of the base, DiT stage 1, end-to-end) as `Task`s, by name."""

from planx_jax.train.tasks.base import Task
from planx_jax.train.tasks.dit_sft import DiTSFT
from planx_jax.train.tasks.dit_stage1 import DiTStage1
from planx_jax.train.tasks.end_to_end import EndToEnd
from planx_jax.train.tasks.planner_sft import PlannerSFT

TASKS = {cls.stage: cls for cls in (PlannerSFT, DiTSFT, DiTStage1, EndToEnd)}

__all__ = ["DiTSFT", "DiTStage1", "EndToEnd", "PlannerSFT", "TASKS", "Task"]
