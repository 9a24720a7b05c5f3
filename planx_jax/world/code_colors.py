"""The colour each TA-Tok code stands for: the mean colour of the 9 x 9 image cells it encodes, from frames and their
scale-2 codes (the plan reward reads plans by it, the demo draws plans with it). Not the drawing of plans."""

import numpy as np

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


__all__ = ["GRID", "cell_colors", "code_colors"]
