"""Pictures of keyframe plans: each TA-Tok code drawn in the mean colour of the image cells it encodes
(world.code_colors), next to the keyframes the DiT rendered from the plan. For looking at plans, not scoring them."""

import numpy as np

from planx_jax.video_io import contact_sheet
from planx_jax.world.code_colors import GRID


def plan_picture(colors: np.ndarray, plan_codes: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
  """Top row: the planned keyframes [K-1, 81] as code-colour grids; bottom row: the rendered keyframes
  [K-1, H, W, 3] uint8. Returns one RGB image."""
  size = keyframes.shape[1]
  scale = -(-size // GRID)
  grids = colors[plan_codes.reshape(-1, GRID, GRID)]  # [K-1, 9, 9, 3]
  grids = np.repeat(np.repeat(grids, scale, axis=1), scale, axis=2)[:, :size, :size]
  return contact_sheet(np.concatenate([grids, keyframes]), columns=len(plan_codes))


__all__ = ["plan_picture"]
