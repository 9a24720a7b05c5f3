"""Pictures of keyframe plans: each TA-Tok code drawn in the mean colour of the image cells it encodes, next to the
keyframes the DiT rendered from the plan. For looking at plans, not for scoring them."""

import numpy as np

from planx_jax.video_io import contact_sheet

GRID = 9  # scale-2 code grid side


def cell_colors(frames: np.ndarray) -> np.ndarray:
  """Frames [N, H, W, 3] uint8 -> mean colour of each 9x9 code cell [N, 81, 3] fp32."""
  n, h, w, _ = frames.shape
  rows = np.minimum(np.arange(h) * GRID // h, GRID - 1)
  cols = np.minimum(np.arange(w) * GRID // w, GRID - 1)
  cell = (rows[:, None] * GRID + cols[None, :]).reshape(-1)  # [H * W]
  flat = frames.reshape(n, h * w, 3).astype(np.float64)
  sums = np.zeros((n, GRID * GRID, 3))
  np.add.at(sums, (slice(None), cell), flat)
  counts = np.bincount(cell, minlength=GRID * GRID)[None, :, None]
  return (sums / counts).astype(np.float32)


def code_colors(frames: np.ndarray, codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """Mean cell colour of every code [codebook_size, 3] uint8 from frames [N, H, W, 3] and their codes [N, 81];
  codes never seen are mid gray."""
  colors = cell_colors(frames).reshape(-1, 3)
  flat = codes.reshape(-1)
  sums = np.zeros((codebook_size, 3))
  np.add.at(sums, flat, colors)
  counts = np.bincount(flat, minlength=codebook_size)[:, None]
  table = np.where(counts > 0, sums / np.maximum(counts, 1), 128.0)
  return np.round(table).astype(np.uint8)


def plan_picture(colors: np.ndarray, plan_codes: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
  """Top row: the planned keyframes [K-1, 81] as code-colour grids; bottom row: the rendered keyframes
  [K-1, H, W, 3] uint8. Returns one RGB image."""
  size = keyframes.shape[1]
  scale = -(-size // GRID)
  grids = colors[plan_codes.reshape(-1, GRID, GRID)]  # [K-1, 9, 9, 3]
  grids = np.repeat(np.repeat(grids, scale, axis=1), scale, axis=2)[:, :size, :size]
  return contact_sheet(np.concatenate([grids, keyframes]), columns=len(plan_codes))


__all__ = ["cell_colors", "code_colors", "plan_picture"]
