"""First-frame (TI2V) and video-continuation conditioning of the video DiT: which latent frames are given, and putting
the given latents back on them. Shared by the flow loss, the ODE / SDE samplers and the RL rollouts.
"""

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import describe, f32, is_concrete, require_float_like, require_int, require_latents


def first_frame_mask(batch: int, num_latent_frames: int, num_fixed=1) -> jax.Array:
  """[B, F] fp32: 0 on the fixed (conditioning) latent frames, 1 on the frames to generate.

  Args:
    batch: B.
    num_latent_frames: F.
    num_fixed: the number of leading frames that are given: 1 for image-to-video, k for video continuation,
      0 for text-to-video. An int, or an integer [B] array for a batch mixing tasks; each in [0, F).
  """
  require_int("batch", batch, 1)
  require_int("num_latent_frames", num_latent_frames, 1)
  if isinstance(num_fixed, (int, np.integer)) and not isinstance(num_fixed, bool):
    if not 0 <= num_fixed < num_latent_frames:
      raise ValueError(f"num_fixed must be in [0, num_latent_frames={num_latent_frames}), got {num_fixed}")
    num_fixed = jnp.full((batch,), num_fixed, jnp.int32)
  elif hasattr(num_fixed, "shape") and jnp.issubdtype(num_fixed.dtype, jnp.integer):
    if tuple(num_fixed.shape) != (batch,):
      raise ValueError(f"num_fixed must be an int or an integer [B]={batch} array, got {describe(num_fixed)}")
    if is_concrete(num_fixed):
      values = np.asarray(num_fixed)
      if values.min() < 0 or values.max() >= num_latent_frames:
        raise ValueError(f"num_fixed values must be in [0, num_latent_frames={num_latent_frames}), got "
                         f"{values.tolist()}")
  else:
    raise ValueError(f"num_fixed must be an int or an integer [B]={batch} array, got {num_fixed!r}")
  frames = jnp.arange(num_latent_frames, dtype=jnp.int32)
  return (frames[None, :] >= jnp.asarray(num_fixed)[:, None]).astype(jnp.float32)  # [B, F]


def apply_fixed_frames(latents, fixed_latents, frame_mask) -> jax.Array:
  """(1 - m) z0 + m x: put the conditioning latents z0 back on the fixed frames (m = 0), fp32.

  Wan TI2V applies this to the initial noise and after every sampler step.

  Args:
    latents: [B, F, H, W, C] the current latents x.
    fixed_latents: [B, F, H, W, C] z0; only its fixed frames matter.
    frame_mask: [B, F] 0 on fixed frames, 1 elsewhere (`first_frame_mask`).
  """
  require_latents("latents", latents)
  require_float_like("fixed_latents", fixed_latents, "latents", latents)
  b, f = latents.shape[:2]
  if not hasattr(frame_mask, "shape") or tuple(frame_mask.shape) != (b, f):
    raise ValueError(f"frame_mask must be [B, F]=[{b}, {f}], got {describe(frame_mask)}")
  m = f32(frame_mask)[:, :, None, None, None]  # [B, F, 1, 1, 1]
  return (1.0 - m) * f32(fixed_latents) + m * f32(latents)
