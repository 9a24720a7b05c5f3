"""Keyframe selection for Plan-X plans: which frames of a clip TA-Tok encodes (2 per second from frame 0).

Plan-X's planner writes one 81-code keyframe per half second; this module picks those
frames from a video array and converts them to [0, 1] floats. Encoding is `planx_jax.tatok`.
"""

import math

import numpy as np

KEYFRAME_RATE = 2.0  # keyframes per second


def keyframe_indices(num_frames: int, fps: float, rate: float = KEYFRAME_RATE) -> np.ndarray:
  """Frame indices at t = 0, 1/rate, 2/rate, ... seconds, each the nearest frame (ties round up), within the clip.

  A 121-frame 24 fps clip gives 0, 12, ..., 120 (11 keyframes); any clip shorter
  than 1/rate seconds gives [0]. When fps < rate, neighbouring keyframes can repeat
  a frame (the plan stays aligned to time).
  """
  if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames!r}")
  if not math.isfinite(fps) or fps <= 0:
    raise ValueError(f"fps must be a positive number, got {fps!r}")
  if not math.isfinite(rate) or rate <= 0:
    raise ValueError(f"keyframe rate must be a positive number, got {rate!r}")
  step = float(fps) / float(rate)  # frames between keyframes
  count = int(math.floor((num_frames - 1) / step + 1e-9)) + 1
  indices = np.floor(np.arange(count, dtype=np.float64) * step + 0.5).astype(np.int64)
  return indices[indices < num_frames]


def frames_to_unit(frames) -> np.ndarray:
  """Video [T, H, W, 3] uint8 (0..255) or float in [0, 1] -> float32 in [0, 1]; anything else is an error."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"expected a video [T, H, W, 3] (RGB, channels last), got shape {frames.shape}")
  if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
    raise ValueError(f"video has an empty axis: shape {frames.shape}")
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 255.0
  if not np.issubdtype(frames.dtype, np.floating):
    raise ValueError(f"video must be uint8 (0..255) or float in [0, 1], got dtype {frames.dtype}")
  frames = frames.astype(np.float32)
  if not np.isfinite(frames).all() or frames.min() < 0.0 or frames.max() > 1.0:
    raise ValueError(f"float video values must lie in [0, 1], got range [{np.nanmin(frames)}, {np.nanmax(frames)}]; "
                     "pass uint8 frames or divide by 255")
  return frames


def select_keyframes(frames, fps: float, rate: float = KEYFRAME_RATE) -> tuple[np.ndarray, np.ndarray]:
  """Video [T, H, W, 3] -> (keyframes [F, H, W, 3] float32 in [0, 1], their frame indices [F])."""
  frames = np.asarray(frames)
  if frames.ndim != 4:
    raise ValueError(f"expected a video [T, H, W, 3] (RGB, channels last), got shape {frames.shape}")
  indices = keyframe_indices(frames.shape[0], fps, rate)
  return frames_to_unit(frames[indices]), indices  # converts only the keyframes
