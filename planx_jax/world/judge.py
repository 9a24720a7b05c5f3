"""The verifiable judge of the synthetic world: colour-segment generated frames and score Plan-X's four metrics.

Scores one video against its `scenes.Episode` (or a directory of `<name>.mp4` + `<name>.json`); no model code.

Detection: every pixel goes to the nearest of {background} and the six PALETTE colours if its RGB distance is below
COLOR_DISTANCE (palette colours also need MIN_SATURATION = max - min channel), else to nothing. Per scene object and
frame: area (its pixels), components (pieces of >= MIN_COMPONENT_AREA px; pieces less than 2 px apart are one
piece, which bridges the seams of MP4 chroma subsampling) and centre (centroid of those pieces; NaN below
MIN_OBJECT_AREA px); extra_area counts pixels of palette colours absent from the scene.

Metrics (each in [0, 1]; step windows from `scenes.step_windows`, centres c(t), window [a, b]):
- motion of an object in a window: max over t in [a, b] of |c(t) - c(a)|; it "moved" if > MOTION_THRESHOLD;
  an object missing (NaN centre) somewhere in the window has unknown motion.
- movement correct: a move needs c(b) - c(a) along the instructed direction >= 0.5 MOVE and its orthogonal part
  smaller than the along part; a jump needs the highest point >= 0.5 JUMP above c(a) and |c(b) - c(a)| <= 0.5 JUMP.
- accuracy (interaction fidelity: right object, right movement, right outcome): per step the mean of (a) the
  instructed object moved and moved strictly more than every other object, (b) its movement is correct, (c) its
  c(b) is within OUTCOME_TOL px of the ground-truth end position; averaged over steps.
- completeness (prompt recall): the fraction of steps whose movement is correct.
- fidelity (motion precision): of the observed motions, (object, window) pairs that moved or went missing, the
  fraction made by that window's instructed object (and not missing); 1.0 when nothing moved.
- consistency: the fraction of frames where every scene object is exactly one component with area within
  AREA_RANGE x its area in the rendered first frame, and extra_area <= EXTRA_AREA_TOL.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from planx_jax.world import scenes

COLOR_DISTANCE = 90.0
MIN_SATURATION = 60
MIN_COMPONENT_AREA = 6
MIN_OBJECT_AREA = 12
MOTION_THRESHOLD = 0.4 * scenes.MOVE
OUTCOME_TOL = 0.5 * scenes.MOVE
AREA_RANGE = (0.5, 2.0)
EXTRA_AREA_TOL = 20
METRICS = ("accuracy", "completeness", "fidelity", "consistency")


@dataclasses.dataclass(frozen=True)
class Detections:
  centre: np.ndarray  # [T, n, 2] float64 (row, col), NaN where the object is not found
  area: np.ndarray  # [T, n] int: pixels of each scene colour
  components: np.ndarray  # [T, n] int: pieces of >= MIN_COMPONENT_AREA px (closer than 2 px: one piece)
  extra_area: np.ndarray  # [T] int: pixels of palette colours that are not in the scene


def _check_frames(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
  return frames


def assign_colors(frames: np.ndarray, candidates: np.ndarray, saturated: np.ndarray) -> np.ndarray:
  """frames [T, H, W, 3] uint8, candidates [K, 3] -> [T, H, W] int: index of the nearest candidate, -1 if none."""
  pixels = frames.astype(np.float32)
  distance = np.linalg.norm(pixels[..., None, :] - candidates.astype(np.float32), axis=-1)  # [T, H, W, K]
  nearest = distance.argmin(-1)
  ok = np.take_along_axis(distance, nearest[..., None], -1)[..., 0] < COLOR_DISTANCE
  saturation = frames.max(-1).astype(np.int32) - frames.min(-1)
  ok &= ~saturated[nearest] | (saturation >= MIN_SATURATION)
  return np.where(ok, nearest, -1)


def label_components(masks: np.ndarray) -> np.ndarray:
  """masks [..., H, W] bool -> [..., H, W] int64 4-connected component ids, unique over the whole array; -1 off."""
  size = masks.size
  labels = np.where(masks, np.arange(size).reshape(masks.shape), size)
  while True:
    padded = np.pad(labels, [(0, 0)] * (masks.ndim - 2) + [(1, 1), (1, 1)], constant_values=size)
    neighbours = np.minimum.reduce([padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2],
                                    padded[..., 1:-1, 2:], labels])
    updated = np.where(masks, neighbours, size)
    if np.array_equal(updated, labels):
      return np.where(masks, labels, -1)
    labels = updated


def dilate(masks: np.ndarray) -> np.ndarray:
  """masks [..., H, W] bool grown by one pixel in all 8 directions (a 3x3 max filter)."""
  padded = np.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(1, 1), (1, 1)])
  h, w = masks.shape[-2:]
  return np.logical_or.reduce([padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)])


def detect(frames, colors, background) -> Detections:
  """Segments frames [T, H, W, 3] uint8 by colour; `colors` are the scene objects' RGB in order."""
  frames = _check_frames(frames)
  colors = [tuple(int(v) for v in c) for c in colors]
  others = [c for c in scenes.PALETTE.values() if c not in colors]
  candidates = np.array([tuple(background)] + colors + others, np.float32)  # [K, 3]
  saturated = np.arange(len(candidates)) > 0
  assigned = assign_colors(frames, candidates, saturated)  # [T, H, W]
  t, h, w, _ = frames.shape
  n = len(colors)
  masks = assigned[:, None] == np.arange(1, n + 1)[None, :, None, None]  # [T, n, H, W]
  area = masks.sum((-2, -1))
  labels = np.where(masks, label_components(dilate(masks)), -1)
  ids, sizes = np.unique(labels[masks], return_counts=True)
  kept = ids[sizes >= MIN_COMPONENT_AREA]
  components = np.bincount(kept // (h * w), minlength=t * n).reshape(t, n)
  in_kept = masks & np.isin(labels, kept)
  rows, cols = np.mgrid[0:h, 0:w]
  kept_area = in_kept.sum((-2, -1))
  with np.errstate(invalid="ignore", divide="ignore"):
    centre = np.stack([(in_kept * rows).sum((-2, -1)), (in_kept * cols).sum((-2, -1))], -1) / kept_area[..., None]
  centre = np.where((kept_area >= MIN_OBJECT_AREA)[..., None], centre, np.nan)
  extra_area = (assigned > n).sum((-2, -1))
  return Detections(centre=centre, area=area, components=components, extra_area=extra_area)


def _motion(path: np.ndarray) -> float:
  """path [w, 2] centres over a window -> max displacement from its first frame (NaN if missing anywhere)."""
  if np.isnan(path).any():
    return float("nan")
  return float(np.linalg.norm(path - path[0], axis=-1).max())


def movement_correct(path: np.ndarray, action: str) -> bool:
  """path [w, 2] centres over the step's window: is the movement the instructed action?"""
  if np.isnan(path).any():
    return False
  shift = path[-1] - path[0]
  if action == "jumps":
    rise = float((path[0, 0] - path[:, 0]).max())
    return rise >= 0.5 * scenes.JUMP and float(np.linalg.norm(shift)) <= 0.5 * scenes.JUMP
  direction = np.array(scenes.DIRECTIONS[action])
  along = float(shift @ direction)
  orthogonal = abs(float(shift[0] * direction[1] - shift[1] * direction[0]))
  return along >= 0.5 * scenes.MOVE and orthogonal < along


def score_video(frames, episode: scenes.Episode) -> dict:
  """Judges frames [T, H, W, 3] uint8 against the episode -> the four metrics and per-step details."""
  frames = _check_frames(frames)
  expected = (episode.num_frames, episode.size, episode.size)
  if frames.shape[:3] != expected:
    raise ValueError(f"video has {list(frames.shape[:3])} [T, H, W]; the episode expects {list(expected)}")
  det = detect(frames, [scenes.PALETTE[o.color] for o in episode.objects], scenes.BACKGROUNDS[episode.background])
  truth = scenes.trajectories(episode)  # [T, n, 2]
  steps, observed, instructed = [], 0, 0
  for step, (a, b) in zip(episode.steps, scenes.step_windows(len(episode.steps), episode.num_frames)):
    motion = np.array([_motion(det.centre[a:b + 1, o]) for o in range(len(episode.objects))])
    own = motion[step.obj]
    others = np.delete(motion, step.obj)
    largest = bool(own > MOTION_THRESHOLD and (np.isnan(others) | (others < own)).all())
    end_error = float(np.linalg.norm(det.centre[b, step.obj] - truth[b, step.obj]))
    moved = np.isnan(motion) | (motion > MOTION_THRESHOLD)
    observed += int(moved.sum())
    instructed += int(moved[step.obj] and not np.isnan(own))
    steps.append({"object": step.obj, "action": step.action, "window": [a, b],
                  "motion": [None if np.isnan(m) else round(float(m), 3) for m in motion],
                  "largest": largest, "movement": movement_correct(det.centre[a:b + 1, step.obj], step.action),
                  "outcome": bool(end_error <= OUTCOME_TOL), "end_error": None if np.isnan(end_error) else end_error})
  reference = np.array([scenes.shape_mask(o.shape, o.start, episode.size).sum() for o in episode.objects])  # [n]
  sized = (det.area >= AREA_RANGE[0] * reference) & (det.area <= AREA_RANGE[1] * reference)  # [T, n]
  consistent = ((det.components == 1) & sized).all(-1) & (det.extra_area <= EXTRA_AREA_TOL)  # [T]
  return {
      "accuracy": float(np.mean([(s["largest"] + s["movement"] + s["outcome"]) / 3 for s in steps])),
      "completeness": float(np.mean([s["movement"] for s in steps])),
      "fidelity": instructed / observed if observed else 1.0,
      "consistency": float(consistent.mean()),
      "steps": steps,
  }


def score_directory(path) -> dict:
  """Scores every `<name>.mp4` against its sibling `<name>.json` (Episode.to_json()) -> per-video scores + means."""
  from planx_jax.video_io import read_mp4

  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"no directory {path}")
  videos = {p.stem: p for p in path.glob("*.mp4")}
  episodes = {p.stem: p for p in path.glob("*.json")}
  if not videos and not episodes:
    raise ValueError(f"{path} has no <name>.mp4 videos with <name>.json episodes to score")
  lonely = sorted(set(videos) - set(episodes))
  if lonely:
    raise ValueError(f"videos without their episode <name>.json in {path}: {[videos[n].name for n in lonely]}")
  lonely = sorted(set(episodes) - set(videos))
  if lonely:
    raise ValueError(f"episode descriptions without their <name>.mp4 video in {path}: "
                     f"{[episodes[n].name for n in lonely]}")
  scores = {}
  for name in sorted(videos):
    episode = scenes.Episode.from_json(json.loads(episodes[name].read_text()))
    frames, _ = read_mp4(videos[name])
    try:
      scores[name] = score_video(frames, episode)
    except ValueError as err:
      raise ValueError(f"{videos[name]}: {err}") from None
    scores[name]["prompt"] = episode.video_prompt
  mean = {m: float(np.mean([s[m] for s in scores.values()])) for m in METRICS}
  return {"videos": scores, "mean": mean, "count": len(scores)}
