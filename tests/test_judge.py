"""Tests of the verifiable judge: ground truth scores ~1, broken motion scores low, and `planx eval` end to end."""

import argparse
import json

import numpy as np
import pytest

from planx_jax.commands import eval as eval_command
from planx_jax.world import judge
from planx_jax.world import scenes as world
from planx_jax.world.scenes import Episode, Step, WorldObject
from planx_jax.video_io import write_mp4

NUM_PER_SPLIT = 10


@pytest.fixture(scope="module")
def episodes():
  return [world.sample_episode(11, i, split) for split in world.SPLITS for i in range(NUM_PER_SPLIT)]


def mean_scores(episodes, corrupt) -> dict:
  """Mean of each metric over the episodes, each video = corrupt(render, rng)."""
  scores = [judge.score_video(corrupt(world.render(e), np.random.default_rng(i)), e) for i, e in enumerate(episodes)]
  return {m: float(np.mean([s[m] for s in scores])) for m in judge.METRICS}


def paint(episode: Episode, centres: np.ndarray, extra=()) -> np.ndarray:
  """Frames of the episode's objects drawn at centres [T, n, 2], plus extra (color, shape, centre) in every frame."""
  frames = np.empty((len(centres), episode.size, episode.size, 3), np.uint8)
  frames[...] = world.BACKGROUNDS[episode.background]
  for t in range(len(centres)):
    for obj, centre in zip(episode.objects, centres[t]):
      frames[t][world.shape_mask(obj.shape, centre, episode.size)] = world.PALETTE[obj.color]
    for color, shape, centre in extra:
      frames[t][world.shape_mask(shape, centre, episode.size)] = world.PALETTE[color]
  return frames


def scene(steps) -> Episode:
  return Episode("gray", (WorldObject("red", "circle", (26.0, 14.0)), WorldObject("blue", "triangle", (48.0, 14.0)),
                          WorldObject("green", "square", (22.0, 48.0))), tuple(steps))


def write_episodes(directory, episodes, frames_of=world.render, prefix="video"):
  for i, e in enumerate(episodes):
    write_mp4(directory / f"{prefix}{i:02d}.mp4", frames_of(e), world.FPS)
    (directory / f"{prefix}{i:02d}.json").write_text(json.dumps(e.to_json()))


def test_ground_truth_scores_one(episodes):
  for e in episodes:
    scores = judge.score_video(world.render(e), e)
    assert all(scores[m] >= 0.95 for m in judge.METRICS), (e, scores)
    assert all(s["largest"] and s["movement"] and s["outcome"] for s in scores["steps"])


def test_ground_truth_scores_one_through_mp4(tmp_path, episodes):
  write_episodes(tmp_path, episodes)
  result = judge.score_directory(tmp_path)
  assert result["count"] == len(episodes)
  assert sorted(result["videos"]) == [f"video{i:02d}" for i in range(len(episodes))]
  for m in judge.METRICS:
    assert result["mean"][m] >= 0.95, result["mean"]
  assert result["videos"]["video03"]["prompt"] == episodes[3].video_prompt


def test_blurred_noisy_ground_truth_still_scores_high(episodes):
  def degrade(frames, rng):
    padded = np.pad(frames.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
    blurred = sum(padded[:, i:i + frames.shape[1], j:j + frames.shape[2]] for i in range(3) for j in range(3)) / 9
    return np.clip(blurred + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
  scores = mean_scores(episodes, degrade)
  assert all(scores[m] >= 0.9 for m in judge.METRICS), scores


def test_frozen_video_scores_low(episodes):
  scores = mean_scores(episodes, lambda frames, rng: np.repeat(frames[:1], len(frames), 0))
  assert scores["accuracy"] <= 0.2 and scores["completeness"] <= 0.2, scores
  assert scores["fidelity"] == 1.0 and scores["consistency"] == 1.0  # nothing moved, nothing was corrupted


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_reordered_motion_scores_low_completeness(episodes, order):
  def reorder(frames, rng):
    return frames[::-1] if order == "reversed" else frames[rng.permutation(len(frames))]
  scores = mean_scores(episodes, reorder)
  assert scores["completeness"] <= 0.4, scores
  assert scores["consistency"] == 1.0


def test_uninstructed_motion_lowers_fidelity():
  e = scene([Step(0, "moves right")])
  centres = world.trajectories(e)
  assert judge.score_video(paint(e, centres), e)["fidelity"] == 1.0
  centres[:, 1, 1] += np.linspace(0.0, 16.0, e.num_frames)  # the blue triangle drifts right as well
  scores = judge.score_video(paint(e, centres), e)
  assert scores["fidelity"] == 0.5  # observed: red (instructed) and blue (not)
  assert scores["completeness"] == 1.0
  assert scores["steps"][0]["largest"] is False  # blue moved as far as red


def test_wrong_object_moving_scores_low():
  e = scene([Step(0, "moves right"), Step(2, "moves down")])
  wrong = scene([Step(1, "moves right"), Step(2, "moves down")])  # blue moves instead of red, then green as told
  scores = judge.score_video(world.render(wrong), e)
  assert scores["completeness"] == 0.5 and scores["fidelity"] == 0.5
  first, second = scores["steps"]
  assert not (first["largest"] or first["movement"] or first["outcome"])
  assert second["largest"] and second["movement"] and second["outcome"]
  assert scores["accuracy"] == 0.5


def test_missing_or_duplicated_objects_lower_consistency():
  e = scene([Step(0, "moves right")])
  frames = world.render(e)
  painted_out = frames.copy()
  painted_out[8:][(painted_out[8:] == world.PALETTE["green"]).all(-1)] = world.BACKGROUNDS["gray"]
  scores = judge.score_video(painted_out, e)
  assert scores["consistency"] == pytest.approx(8 / 17)
  assert scores["fidelity"] < 1.0  # a vanished object is unprompted change
  centres = world.trajectories(e)
  duplicated = paint(e, centres, extra=[("green", "square", (48.0, 46.0))])
  assert judge.score_video(duplicated, e)["consistency"] == 0.0
  intruder = paint(e, centres, extra=[("yellow", "circle", (48.0, 46.0))])
  assert judge.score_video(intruder, e)["consistency"] == 0.0
  assert judge.score_video(paint(e, centres), e)["consistency"] == 1.0


def test_detected_centres_match_the_trajectories(episodes):
  for e in episodes:
    det = judge.detect(world.render(e), [world.PALETTE[o.color] for o in e.objects], world.BACKGROUNDS[e.background])
    np.testing.assert_allclose(det.centre, world.trajectories(e), atol=1.0)
    assert (det.components == 1).all() and (det.extra_area == 0).all()
    reference = [world.shape_mask(o.shape, o.start, e.size).sum() for o in e.objects]
    np.testing.assert_array_equal(det.area[0], reference)


def test_label_components_separates_pieces():
  masks = np.zeros((2, 8, 8), bool)
  masks[0, 1:3, 1:3] = True
  masks[0, 5:7, 1:7] = True
  masks[0, 0, 7] = True
  masks[1, :, 4] = True  # one long line
  masks[1, 7, :] = True
  labels = judge.label_components(masks)
  assert len(np.unique(labels[0][masks[0]])) == 3 and len(np.unique(labels[1][masks[1]])) == 1
  assert (labels[~masks] == -1).all()
  assert not set(labels[0][masks[0]]) & set(labels[1][masks[1]])


def test_score_video_rejects_mismatched_frames():
  e = scene([Step(0, "jumps")])
  with pytest.raises(ValueError, match="episode expects"):
    judge.score_video(world.render(e)[:9], e)
  with pytest.raises(ValueError, match="uint8"):
    judge.score_video(world.render(e).astype(np.float32), e)


def test_score_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no directory"):
    judge.score_directory(tmp_path / "absent")
  with pytest.raises(ValueError, match="no <name>.mp4"):
    judge.score_directory(tmp_path)
  e = scene([Step(0, "jumps")])
  write_mp4(tmp_path / "lonely.mp4", world.render(e), world.FPS)
  with pytest.raises(ValueError, match="lonely.mp4"):
    judge.score_directory(tmp_path)
  (tmp_path / "lonely.json").write_text(json.dumps(e.to_json()))
  (tmp_path / "orphan.json").write_text(json.dumps(e.to_json()))
  with pytest.raises(ValueError, match="orphan.json"):
    judge.score_directory(tmp_path)


def test_eval_command_prints_and_writes_scores(tmp_path, capsys, episodes):
  videos = tmp_path / "videos"
  videos.mkdir()
  write_episodes(videos, episodes[:2])
  write_episodes(videos, [scene([Step(0, "moves right")])], frames_of=lambda e: np.repeat(world.render(e)[:1], 17, 0),
                 prefix="zfrozen")
  parser = argparse.ArgumentParser()
  eval_command.add_parser(parser.add_subparsers())
  out = tmp_path / "scores.json"
  args = parser.parse_args(["eval", str(videos), "--out", str(out)])
  assert args.run(args) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].split()[:5] == ["video", "accuracy", "completeness", "fidelity", "consistency"]
  assert printed[1].startswith("video00") and episodes[1].video_prompt in printed[2]
  assert printed[3].startswith("zfrozen00") and printed[-1].startswith("mean") and "(3 videos)" in printed[-1]
  written = json.loads(out.read_text())
  assert written["count"] == 3 and written["videos"]["video00"]["accuracy"] >= 0.95
  assert written["videos"]["zfrozen00"]["completeness"] == 0.0
  assert written["mean"]["completeness"] == pytest.approx(np.mean([written["videos"][n]["completeness"]
                                                                   for n in ("video00", "video01", "zfrozen00")]))
  bad = parser.parse_args(["eval", str(videos), "--out", str(videos / "scores.json")])
  with pytest.raises(ValueError, match="inside"):
    bad.run(bad)
