"""TempAct's hierarchical rewards (Eq. 12-16, Appendix B) computed from its LLM / VLM judges' parsed JSON outputs.

Pure Python: no judge model, no prompting and no group advantages (planx_jax.losses); malformed judge output is an
error, never a silent zero.

Judge outputs and their fields (Appendix B's schemas; the official code reads the same names):
- plan judge (Eq. 12, an LLM scoring a plan against the prompt): `faithfulness_score`, `coverage_score`,
  `temporal_score`, `hallucination_score`, each on [0, 1] (B.1 gives the hallucination bands as 0.0-1.0 and the
  official code uses the scores as they are), so `JudgeWeights.scale` is 1.
- video judge (Eq. 13, a VLM scoring the full video): `frame_scores` (a non-empty list, one per sampled frame),
  `final_score`, `temporal_order_score`, `physical_plausibility_score`, `visual_consistency_score`,
  `prompt_alignment_score`, each on [0, 10].
- step judge (Eq. 15, a VLM scoring the first transition chunk against the new step prompt): `subject_score`,
  `scene_score`, `action_score`, `object_appearance_reasonability_score`, `final_score`, each on [0, 10].
Other fields (the judges' "think" reasoning) are ignored. Scores are divided by their scale to [0, 1]; a missing
field, a non-number (booleans and numeric strings included), NaN or a score outside [0, scale] is a ValueError.
A judge's raw text is accepted too: an optional leading <think>...</think> block and an optional ```json fence
are removed, and the rest must be one JSON object.
"""

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence

_THINK_BLOCK = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Weights:
  """Every field finite; a `scale` field positive."""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not _is_number(value) or not math.isfinite(value) or (field.name == "scale" and value <= 0):
        wanted = "a positive number" if field.name == "scale" else "a finite number"
        raise ValueError(f"{type(self).__name__}.{field.name} must be {wanted}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class JudgeWeights(_Weights):
  """R_judge = faithfulness F + coverage C + temporal T - hallucination H (Eq. 12); scores divided by `scale`."""

  faithfulness: float = 0.4
  coverage: float = 0.25
  temporal: float = 0.25
  hallucination: float = 0.3  # subtracted
  scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class VideoWeights(_Weights):
  """R_video = frame mean(S_frame) + final S_final + temporal S_temp + physical S_phys + visual S_vis
  + alignment S_align (Eq. 13); scores divided by `scale`."""

  frame: float = 0.2
  final: float = 0.3
  temporal: float = 0.2
  physical: float = 0.1
  visual: float = 0.1
  alignment: float = 0.1
  scale: float = 10.0


@dataclasses.dataclass(frozen=True)
class PlanWeights(_Weights):
  """R_plan = judge R_judge + video mean_n R_video (Eq. 14)."""

  judge: float = 0.15
  video: float = 0.85


@dataclasses.dataclass(frozen=True)
class StepWeights(_Weights):
  """R_step = subject S_sub + scene S_scene + action S_act + object S_obj + final S_final (Eq. 15); scores divided
  by `scale`."""

  subject: float = 0.15
  scene: float = 0.15
  action: float = 0.2
  object: float = 0.2
  final: float = 0.3
  scale: float = 10.0


@dataclasses.dataclass(frozen=True)
class ExecWeights(_Weights):
  """R_exec = step R_step + aesthetic R_aes (Eq. 16)."""

  step: float = 0.6
  aesthetic: float = 0.4


JUDGE_WEIGHTS = JudgeWeights()
VIDEO_WEIGHTS = VideoWeights()
PLAN_WEIGHTS = PlanWeights()
STEP_WEIGHTS = StepWeights()
EXEC_WEIGHTS = ExecWeights()


def parse_judge_output(output) -> dict:
  """A judge's output as a dict: a Mapping is copied; a string is parsed as described in the module docstring."""
  if isinstance(output, Mapping):
    return dict(output)
  if not isinstance(output, str):
    raise ValueError(f"judge output must be a dict or a JSON string, got {type(output).__name__}")
  text = _THINK_BLOCK.sub("", output, count=1).strip()
  fenced = _FENCE.match(text)
  if fenced:
    text = fenced.group(1)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f"judge output is not valid JSON ({err.msg} at position {err.pos}): {_start(output)}") from None
  if not isinstance(data, dict):
    raise ValueError(f"judge output must be a JSON object, got a JSON {type(data).__name__}: {_start(output)}")
  return data


def judge_reward(output, weights: JudgeWeights = JUDGE_WEIGHTS) -> float:
  """R_judge (Eq. 12) from the plan judge's output (dict or JSON string)."""
  d = parse_judge_output(output)
  s = weights.scale
  return (weights.faithfulness * _score(d, "faithfulness_score", s) + weights.coverage * _score(d, "coverage_score", s)
          + weights.temporal * _score(d, "temporal_score", s)
          - weights.hallucination * _score(d, "hallucination_score", s))


def video_reward(output, weights: VideoWeights = VIDEO_WEIGHTS) -> float:
  """R_video (Eq. 13) from the video judge's output (dict or JSON string); S_frame is the mean frame score."""
  d = parse_judge_output(output)
  s = weights.scale
  frames = _frame_scores(d, s)
  return (weights.frame * sum(frames) / len(frames) + weights.final * _score(d, "final_score", s)
          + weights.temporal * _score(d, "temporal_order_score", s)
          + weights.physical * _score(d, "physical_plausibility_score", s)
          + weights.visual * _score(d, "visual_consistency_score", s)
          + weights.alignment * _score(d, "prompt_alignment_score", s))


def plan_reward(r_judge: float, r_videos: Sequence[float], weights: PlanWeights = PLAN_WEIGHTS) -> float:
  """R_plan (Eq. 14) of one plan from its R_judge and the R_video of each of its N continuations."""
  r_judge = _finite("r_judge", r_judge)
  if isinstance(r_videos, (str, bytes)) or not isinstance(r_videos, Sequence) or not r_videos:
    raise ValueError(f"r_videos must be a non-empty sequence of the plan's R_video values, got {r_videos!r}")
  videos = [_finite(f"r_videos[{i}]", r) for i, r in enumerate(r_videos)]
  return weights.judge * r_judge + weights.video * sum(videos) / len(videos)


def step_reward(output, weights: StepWeights = STEP_WEIGHTS) -> float:
  """R_step (Eq. 15) from the step judge's output (dict or JSON string)."""
  d = parse_judge_output(output)
  s = weights.scale
  return (weights.subject * _score(d, "subject_score", s) + weights.scene * _score(d, "scene_score", s)
          + weights.action * _score(d, "action_score", s)
          + weights.object * _score(d, "object_appearance_reasonability_score", s)
          + weights.final * _score(d, "final_score", s))


def exec_reward(r_step: float, r_aes: float, weights: ExecWeights = EXEC_WEIGHTS) -> float:
  """R_exec (Eq. 16) from R_step and the aesthetic reward R_aes of the same chunk (TempAct's code feeds PickScore
  divided by 26); both are used as given."""
  return weights.step * _finite("r_step", r_step) + weights.aesthetic * _finite("r_aes", r_aes)


def _start(text: str, limit: int = 80) -> str:
  return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _keys(d: dict) -> list[str]:
  return sorted(str(k) for k in d)


def _finite(name: str, value) -> float:
  if not _is_number(value) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  return float(value)


def _checked(d: dict, label: str, value, scale: float) -> float:
  if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= scale:
    raise ValueError(f"judge output field {label!r} must be a number in [0, {scale:g}], got {value!r}; "
                     f"the output has keys {_keys(d)}")
  return float(value) / scale


def _score(d: dict, field: str, scale: float) -> float:
  if field not in d:
    raise ValueError(f"judge output has no field {field!r}; the output has keys {_keys(d)}")
  return _checked(d, field, d[field], scale)


def _frame_scores(d: dict, scale: float) -> list[float]:
  if "frame_scores" not in d:
    raise ValueError(f"judge output has no field 'frame_scores'; the output has keys {_keys(d)}")
  frames = d["frame_scores"]
  if not isinstance(frames, list) or not frames:
    raise ValueError(f"judge output field 'frame_scores' must be a non-empty list of numbers, got {frames!r}; "
                     f"the output has keys {_keys(d)}")
  return [_checked(d, f"frame_scores[{i}]", v, scale) for i, v in enumerate(frames)]


__all__ = [
    "EXEC_WEIGHTS", "JUDGE_WEIGHTS", "PLAN_WEIGHTS", "STEP_WEIGHTS", "VIDEO_WEIGHTS", "ExecWeights", "JudgeWeights",
    "PlanWeights", "StepWeights", "VideoWeights", "exec_reward", "judge_reward", "parse_judge_output",
    "plan_reward", "step_reward", "video_reward",
]
