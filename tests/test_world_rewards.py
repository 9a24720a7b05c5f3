"""Tests of the demo world's verifiable rewards: the video reward on ground truth and frozen videos, and the plan
reward on plans built from painted frames without a tokenizer (one code per distinct cell colour)."""

import math

import numpy as np
import pytest

from planx_jax.world import code_colors, judge
from planx_jax.world import rewards as world_rewards
from planx_jax.world import scenes as world
from planx_jax.world.scenes import Episode, Step, WorldObject

PLANNED = np.array([4, 8, 12, 16])  # the demo's planned keyframes (keyframe 0 is the given first frame)
CELL = world.FRAME_SIZE / code_colors.GRID  # px per code cell
TOLERANCE = world_rewards.PLAN_REWARD_CONFIG.position_tolerance * CELL


@pytest.fixture(scope="module")
def episodes():
  return [world.sample_episode(17, i, split) for split in world.SPLITS for i in range(6)]


def scene() -> Episode:
  """The red circle (instructed) moves right along row 32; green and blue stay far from rows 32..52, cols 12..28."""
  return Episode("gray", (WorldObject("red", "circle", (32.0, 12.0)), WorldObject("green", "square", (12.0, 52.0)),
                          WorldObject("blue", "triangle", (52.0, 52.0))), (Step(0, "moves right"),))


def paint(episode: Episode, centres: np.ndarray, drawn=None) -> np.ndarray:
  """uint8 [N, H, W, 3]: the episode's objects (those in `drawn`, default all) at centres [N, n, 2]."""
  drawn = range(len(episode.objects)) if drawn is None else drawn
  frames = np.empty((len(centres), episode.size, episode.size, 3), np.uint8)
  frames[...] = world.BACKGROUNDS[episode.background]
  for t in range(len(centres)):
    for i in drawn:
      obj = episode.objects[i]
      frames[t][world.shape_mask(obj.shape, centres[t, i], episode.size)] = world.PALETTE[obj.color]
  return frames


def mean_colour_plan(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A perfect tokenizer: one code per distinct (rounded) cell mean colour -> codes [N, 9, 9], code colours."""
  cells = np.round(code_colors.cell_colors(frames)).astype(np.int64)  # [N, 81, 3]
  palette, codes = np.unique(cells.reshape(-1, 3), axis=0, return_inverse=True)
  codes = codes.reshape(len(frames), code_colors.GRID, code_colors.GRID)
  return codes, code_colors.code_colors(frames, codes.reshape(len(frames), -1), len(palette))


def majority_plan(frames: np.ndarray, episode: Episode) -> tuple[np.ndarray, np.ndarray]:
  """Hard codes: each cell's majority colour among the background and the palette -> codes [N, 9, 9], palette."""
  palette = np.array([world.BACKGROUNDS[episode.background]] + list(world.PALETTE.values()), np.uint8)
  index = np.linalg.norm(frames[..., None, :].astype(np.float64) - palette, axis=-1).argmin(-1)  # [N, H, W]
  line = np.minimum(np.arange(episode.size) * code_colors.GRID // episode.size, code_colors.GRID - 1)
  cell = (line[:, None] * code_colors.GRID + line[None, :]).reshape(-1)  # [H * W]
  codes = np.zeros((len(frames), code_colors.GRID ** 2), np.int64)
  for i in range(len(frames)):
    votes = np.zeros((code_colors.GRID ** 2, len(palette)), np.int64)
    np.add.at(votes, (cell, index[i].reshape(-1)), 1)
    codes[i] = votes.argmax(-1)
  return codes.reshape(-1, code_colors.GRID, code_colors.GRID), palette


def plan_reward_of(episode: Episode, frames: np.ndarray) -> dict:
  codes, colors = mean_colour_plan(frames)
  return world_rewards.plan_reward(codes, colors, episode, PLANNED)


# --- Video reward -------------------------------------------------------------------------------------------

def test_video_reward_ground_truth_is_one(episodes):
  for e in episodes[:4]:
    out = world_rewards.video_reward(world.render(e), e)
    assert out["reward"] == 1.0 and all(out[m] == 1.0 for m in judge.METRICS), out


def test_video_reward_frozen_is_lower_and_a_weighted_mean(episodes):
  for e in episodes[:4]:
    frames = world.render(e)
    out = world_rewards.video_reward(np.repeat(frames[:1], len(frames), 0), e)
    assert out["reward"] < 0.8, out
    assert out["reward"] == pytest.approx(sum(out[m] for m in judge.METRICS) / 4, abs=1e-12)
    only_accuracy = world_rewards.VideoRewardWeights(accuracy=1.0, completeness=0.0, fidelity=0.0, consistency=0.0)
    assert world_rewards.video_reward(np.repeat(frames[:1], len(frames), 0), e, only_accuracy)["reward"] == \
        pytest.approx(out["accuracy"], abs=1e-12)
  with pytest.raises(ValueError, match="not all 0"):
    world_rewards.VideoRewardWeights(0.0, 0.0, 0.0, 0.0)


# --- Plan reward --------------------------------------------------------------------------------------------

def test_ground_truth_plan_scores_one(episodes):
  for e in episodes:
    out = plan_reward_of(e, world.render(e)[PLANNED])
    assert abs(out["reward"] - 1.0) <= 1e-6, out
    assert np.nanmax(out["position_error"]) < 1.0  # px; the tolerance is half a cell
    flat_codes, colors = mean_colour_plan(world.render(e)[PLANNED])
    flat = world_rewards.plan_reward(flat_codes.reshape(len(PLANNED), -1), colors, e, list(PLANNED))
    assert flat["reward"] == out["reward"]


def test_majority_codes_stay_within_half_a_cell(episodes):
  for e in episodes:
    codes, palette = majority_plan(world.render(e)[PLANNED], e)
    out = world_rewards.plan_reward(codes, palette, e, PLANNED)
    assert np.nanmax(out["position_error"]) <= TOLERANCE and out["reward"] >= 0.9, out


def test_frozen_plan_is_lower(episodes):
  for e in episodes + [scene()]:
    out = plan_reward_of(e, np.repeat(world.render(e)[:1], len(PLANNED), 0))
    truth = world.trajectories(e)
    displacement = np.linalg.norm(truth[PLANNED] - truth[0], axis=-1)  # [K, n] from the start position
    moved, still = displacement > 2 * TOLERANCE, displacement == 0
    assert moved.any() and out["reward"] < 1.0 - 0.05, out
    # beyond 2 tolerances the credit is at most exp(-(tolerance - 1 px) / cell) ~ 0.70
    assert (out["credit"][moved] < 0.75).all() and (out["credit"][still] == 1.0).all(), out


def test_missing_instructed_object_loses_its_share():
  e = scene()
  truth = world.trajectories(e)[PLANNED]
  out = plan_reward_of(e, paint(e, truth, drawn=[1, 2]))
  # credit 0 for the red circle (weight 2) at every keyframe, 1 for the others (weight 1 each): 1 - 2 / (2 + 1 + 1)
  assert out["reward"] == pytest.approx(0.5, abs=1e-9)
  assert (out["presence"][:, 0] == 0).all() and np.isnan(out["position_error"][:, 0]).all()


def test_misplaced_instructed_object_is_monotone_in_the_displacement():
  e = scene()
  truth = world.trajectories(e)[PLANNED]
  displacements = [0.0, 2.0, 6.0, 10.0, 14.0, 20.0]
  rewards = []
  for d in displacements:
    centres = truth.copy()
    centres[:, 0, 0] += d  # the red circle d px below its place at every planned keyframe
    rewards.append(plan_reward_of(e, paint(e, centres))["reward"])
  assert rewards[0] == pytest.approx(1.0, abs=1e-9) and rewards[1] == pytest.approx(1.0, abs=1e-9)
  assert all(a > b for a, b in zip(rewards[2:], rewards[3:])), rewards
  for d, r in zip(displacements[2:], rewards[2:]):
    # the red circle's credit exp(-(d - tolerance) / cell) carries 2 / 4 of the weight; mean-colour cells place its
    # centre within 0.1 px, which moves the reward by at most 0.5 * 0.1 / cell ~ 0.007
    expected = 0.5 + 0.5 * math.exp(-(d - TOLERANCE) / CELL)
    assert abs(r - expected) < 0.01, (d, r, expected)


def test_instructed_objects_weigh_more():
  e = scene()
  truth = world.trajectories(e)[PLANNED]
  instructed, other = truth.copy(), truth.copy()
  instructed[:, 0, 0] += 12.0  # the red circle
  other[:, 1, 0] += 12.0  # the green square (not instructed), into free space below it
  r_instructed = plan_reward_of(e, paint(e, instructed))["reward"]
  r_other = plan_reward_of(e, paint(e, other))["reward"]
  assert r_instructed < r_other < 1.0


def test_plan_reward_input_errors():
  e = scene()
  codes, colors = mean_colour_plan(paint(e, world.trajectories(e)[PLANNED]))
  with pytest.raises(ValueError, match="plan_codes must be int"):
    world_rewards.plan_reward(codes.astype(np.float32), colors, e, PLANNED)
  with pytest.raises(ValueError, match="not a square grid"):
    world_rewards.plan_reward(codes.reshape(len(PLANNED), -1)[:, :80], colors, e, PLANNED)
  with pytest.raises(ValueError, match="code_colors rows"):
    world_rewards.plan_reward(codes, colors[:1], e, PLANNED)
  with pytest.raises(ValueError, match="code_colors must be"):
    world_rewards.plan_reward(codes, colors[:, :2], e, PLANNED)
  with pytest.raises(ValueError, match="4 frame indices"):
    world_rewards.plan_reward(codes, colors, e, PLANNED[:3])
  with pytest.raises(ValueError, match=r"keyframe_frames must be in \[0, 17\)"):
    world_rewards.plan_reward(codes, colors, e, PLANNED + 1)
  with pytest.raises(ValueError, match="area_range"):
    world_rewards.PlanRewardConfig(area_range=(2.0, 1.0))
