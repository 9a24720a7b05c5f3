"""Verifiable rewards on the synthetic world of `planx demo`: a generated video scored by the colour judge, and a
semantic plan (the planner's keyframe codes) scored against the episode's ground-truth object positions.

Pure numpy, so RL is measurable on CPU; not the judge itself (world.judge) and not the scenes (world.scenes).

Plan reward. Each planned keyframe is drawn as a g x g picture, every cell in its code's colour (`code_colors`: the
mean RGB of the image cells each code encodes, as `world.code_colors.code_colors` computes it), the cells laid over
the frame as `world.code_colors.cell_colors` lays them (pixel row r is in cell row r * g // size). A cell colour c is
read as a blend of the background b and one scene object's colour o: its share f = clip((c - b).(o - b) /
|o - b|^2, 0, 1), and the cell goes to the object whose blend line b + f (o - b) is nearest to c, if that distance
is below `color_tolerance` (cells of other colours, and cells mixing two objects, go to no object). Per object and
keyframe, the found mass is sum f * (pixels of the cell) and the found centre the mass-weighted mean of the cells'
pixel centroids. Credit = presence x position:
- presence: mass / (the object's rendered area) within `area_range` scores 1, below it the ratio / low end, above
  it high end / ratio (0 when nothing is found);
- position: exp(-max(0, e - tolerance) / scale) for the error e between the found centre and the ground truth
  (`scenes.trajectories` at the keyframe's frame), tolerance and scale in cells (size / g px).
The reward is the weighted mean credit over keyframes and objects, instructed objects (those of any step) weighted
`instructed_weight`, the others `other_weight`: 1.0 at most, reached when every object is found with its area at
its place. A plan made from the ground-truth frames with mean-colour codes scores 1.0 (errors stay under a pixel);
hard-quantised codes (each cell's majority colour) place objects within half a cell, their found area coarser.
Pass only the planned keyframes (the demo plans K - 1 of them; keyframe 0 is the given first frame).
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from planx_jax.world import judge, scenes


def _nonnegative(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclasses.dataclass(frozen=True)
class VideoRewardWeights:
  """Weights of the judge's four metrics in the video reward (their weighted mean); equal by default, as Plan-X
  reports the four side by side."""

  accuracy: float = 1.0
  completeness: float = 1.0
  fidelity: float = 1.0
  consistency: float = 1.0

  def __post_init__(self):
    values = [getattr(self, m) for m in judge.METRICS]
    if not all(_nonnegative(v) for v in values) or sum(values) <= 0:
      raise ValueError(f"video reward weights must be finite, >= 0 and not all 0, got "
                       f"{dict(zip(judge.METRICS, values))}")


@dataclasses.dataclass(frozen=True)
class PlanRewardConfig:
  """Settings of the plan reward (module docstring)."""

  instructed_weight: float = 2.0
  other_weight: float = 1.0
  position_tolerance: float = 0.5  # cells of error with full credit
  position_scale: float = 1.0  # cells: e-folding length of the credit beyond the tolerance
  area_range: tuple[float, float] = (0.25, 2.0)  # found mass / rendered area with full presence credit
  color_tolerance: float = 40.0  # RGB distance from a cell colour to an object's blend line

  def __post_init__(self):
    for name in ("instructed_weight", "other_weight", "position_tolerance", "color_tolerance"):
      if not _nonnegative(getattr(self, name)):
        raise ValueError(f"PlanRewardConfig.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
    if not (_nonnegative(self.position_scale) and self.position_scale > 0):
      raise ValueError(f"PlanRewardConfig.position_scale must be > 0, got {self.position_scale!r}")
    if self.instructed_weight + self.other_weight <= 0:
      raise ValueError("PlanRewardConfig needs a positive instructed_weight or other_weight")
    low_high = tuple(self.area_range) if isinstance(self.area_range, (tuple, list)) else ()
    if len(low_high) != 2 or not all(_nonnegative(v) for v in low_high) or not 0 < low_high[0] <= low_high[1]:
      raise ValueError(f"PlanRewardConfig.area_range must be (low, high) with 0 < low <= high, got "
                       f"{self.area_range!r}")


VIDEO_REWARD_WEIGHTS = VideoRewardWeights()
PLAN_REWARD_CONFIG = PlanRewardConfig()


def video_reward(frames, episode: scenes.Episode, weights: VideoRewardWeights = VIDEO_REWARD_WEIGHTS) -> dict:
  """Frames [T, H, W, 3] uint8 of the episode -> {"reward": weighted mean of the four metrics, and the four}."""
  scores = judge.score_video(frames, episode)
  parts = {m: float(scores[m]) for m in judge.METRICS}
  total = sum(getattr(weights, m) for m in judge.METRICS)
  return {"reward": sum(getattr(weights, m) * parts[m] for m in judge.METRICS) / total, **parts}


def plan_reward(plan_codes, code_colors, episode: scenes.Episode, keyframe_frames: Sequence[int],
                config: PlanRewardConfig = PLAN_REWARD_CONFIG) -> dict:
  """Scores a semantic plan against the episode (module docstring).

  Args:
    plan_codes: [K, g, g] (or [K, g * g]) int: the codes of the K planned keyframes.
    code_colors: [codebook_size, 3] RGB in [0, 255]: the colour each code stands for.
    episode: the world episode the plan is for.
    keyframe_frames: K frame indices, the frame each planned keyframe depicts.

  Returns:
    {"reward": float in [0, 1], "credit": [K, n], "presence": [K, n], "position_error": [K, n] px, NaN where the
    object is not found}, n = the episode's objects in order.
  """
  codes, colors, frames = _check_plan(plan_codes, code_colors, episode, keyframe_frames)
  k, g = codes.shape[0], codes.shape[1]
  cell = episode.size / g  # px per cell
  mass, centre = _find_objects(colors[codes].astype(np.float64), episode, config.color_tolerance)  # [K, n], [K, n, 2]
  truth = scenes.trajectories(episode)[frames]  # [K, n, 2]
  areas = np.array([scenes.shape_mask(o.shape, o.start, episode.size).sum() for o in episode.objects], np.float64)
  ratio = mass / areas  # [K, n]
  low, high = config.area_range
  with np.errstate(divide="ignore"):
    presence = np.minimum(1.0, np.minimum(ratio / low, np.where(ratio > 0, high / ratio, 1.0)))
  error = np.linalg.norm(centre - truth, axis=-1)  # [K, n], NaN where mass is 0
  excess = np.maximum(0.0, error - config.position_tolerance * cell) / (config.position_scale * cell)
  position = np.where(np.isnan(error), 0.0, np.exp(-np.nan_to_num(excess)))
  credit = presence * position  # [K, n]
  instructed = np.isin(np.arange(len(episode.objects)), [s.obj for s in episode.steps])
  weight = np.where(instructed, config.instructed_weight, config.other_weight)  # [n]
  if weight.sum() <= 0:
    raise ValueError(f"every object of the episode has weight 0 under {config}")
  reward = float((credit * weight).sum() / (k * weight.sum()))
  return {"reward": reward, "credit": credit, "presence": presence, "position_error": error}


def _find_objects(grid: np.ndarray, episode: scenes.Episode, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
  """grid [K, g, g, 3] cell colours -> found mass [K, n] (px) and centre [K, n, 2] (row, col px; NaN if no mass)."""
  g = grid.shape[1]
  line = np.minimum(np.arange(episode.size) * g // episode.size, g - 1)  # [size]: cell of each pixel row / column
  pixels = np.bincount(line, minlength=g).astype(np.float64)  # [g]
  centroid = np.bincount(line, weights=np.arange(episode.size, dtype=np.float64), minlength=g) / pixels  # [g]
  background = np.array(scenes.BACKGROUNDS[episode.background], np.float64)
  direction = np.array([scenes.PALETTE[o.color] for o in episode.objects], np.float64) - background  # [n, 3]
  offset = grid - background  # [K, g, g, 3]
  share = np.clip(np.einsum("kijc,nc->kijn", offset, direction) / (direction ** 2).sum(-1), 0.0, 1.0)
  distance = np.linalg.norm(offset[..., None, :] - share[..., None] * direction, axis=-1)  # [K, g, g, n]
  owner = distance.argmin(-1)  # [K, g, g]
  owned = (owner[..., None] == np.arange(len(direction))) & (distance.min(-1) < tolerance)[..., None]
  mass = np.where(owned, share, 0.0) * (pixels[:, None] * pixels[None, :])[..., None]  # [K, g, g, n] px
  total = mass.sum((1, 2))  # [K, n]
  rows = np.einsum("kijn,i->kn", mass, centroid)
  cols = np.einsum("kijn,j->kn", mass, centroid)
  with np.errstate(invalid="ignore", divide="ignore"):
    centre = np.stack([rows, cols], -1) / total[..., None]  # [K, n, 2]
  return total, np.where(total[..., None] > 0, centre, np.nan)


def _check_plan(plan_codes, code_colors, episode, keyframe_frames):
  codes = np.asarray(plan_codes)
  if not np.issubdtype(codes.dtype, np.integer) or codes.ndim not in (2, 3) or codes.shape[0] < 1:
    raise ValueError(f"plan_codes must be int [K, g, g] or [K, g * g], got {codes.dtype} {list(codes.shape)}")
  if codes.ndim == 2:
    g = math.isqrt(codes.shape[1])
    if g * g != codes.shape[1]:
      raise ValueError(f"plan_codes [K, {codes.shape[1]}]: {codes.shape[1]} codes per keyframe is not a square grid")
    codes = codes.reshape(-1, g, g)
  if codes.shape[1] != codes.shape[2] or not 1 <= codes.shape[1] <= episode.size:
    raise ValueError(f"plan_codes grids must be square with 1..{episode.size} cells a side, got {list(codes.shape)}")
  colors = np.asarray(code_colors)
  if (colors.ndim != 2 or colors.shape[1] != 3 or not np.issubdtype(colors.dtype, np.number)
      or not np.isfinite(colors).all() or colors.min(initial=0) < 0 or colors.max(initial=0) > 255):
    raise ValueError(f"code_colors must be [codebook_size, 3] RGB in [0, 255], got {colors.dtype} "
                     f"{list(colors.shape)}")
  if codes.min() < 0 or codes.max() >= len(colors):
    raise ValueError(f"plan codes must be in [0, {len(colors)}) (the code_colors rows), got "
                     f"[{codes.min()}, {codes.max()}]")
  frames = np.asarray(keyframe_frames)
  if frames.shape != (codes.shape[0],) or not np.issubdtype(frames.dtype, np.integer):
    raise ValueError(f"keyframe_frames must be {codes.shape[0]} frame indices (one per planned keyframe), got "
                     f"{list(keyframe_frames)!r}")
  if frames.min() < 0 or frames.max() >= episode.num_frames:
    raise ValueError(f"keyframe_frames must be in [0, {episode.num_frames}), got {frames.tolist()}")
  return codes, colors, frames


__all__ = ["PLAN_REWARD_CONFIG", "VIDEO_REWARD_WEIGHTS", "PlanRewardConfig", "VideoRewardWeights", "plan_reward",
           "video_reward"]
