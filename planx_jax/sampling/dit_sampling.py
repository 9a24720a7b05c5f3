"""Video latents from the Wan DiT: wires `DiT.apply` into the flow sampler (per-token TI2V timesteps, CFG with a
negative prompt, optional semantic tokens). One jittable function; VAE decoding and text encoding are elsewhere.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from planx_jax.models.dit import DiT
from planx_jax.models.dit_config import DiTConfig
from planx_jax.sampling.flow_sampler import sample_flow


def per_token_timesteps(config: DiTConfig, timesteps: jax.Array, latent_shape) -> jax.Array:
  """Model timesteps [B] -> unchanged; per latent frame [B, F] -> per token [B, L] (frame-major, as the DiT orders)."""
  if timesteps.ndim == 1:
    return timesteps
  f, h, w = latent_shape[1:4]
  pt, ph, pw = config.patch_size
  if f % pt:
    raise ValueError(f"{f} latent frames are not divisible by the temporal patch {pt}")
  # A temporal patch spans pt latent frames; it is fixed only if its first frame is (TI2V fixes frame 0, pt = 1).
  per_patch = timesteps[:, ::pt]  # [B, F / pt]
  return jnp.repeat(per_patch, (h // ph) * (w // pw), axis=1)  # [B, L]


def sample_latents(config: DiTConfig, params, noise: jax.Array, text_emb: jax.Array,
                   negative_text_emb: jax.Array | None = None, *, semantic: jax.Array | None = None,
                   semantic_positions: jax.Array | None = None, semantic_mask: jax.Array | None = None,
                   semantic_in_uncond: bool = False, num_steps: int = 50, shift: float = 5.0,
                   guidance_scale: float = 5.0, solver: str = "unipc", fixed_latents: jax.Array | None = None,
                   frame_mask: jax.Array | None = None,
                   callback: Callable[[int, int], None] | None = None) -> jax.Array:
  """Denoises `noise` [B, F, H, W, C] into clean latents with the DiT (Plan-X: 50 steps, CFG 5.0).

  The conditional branch sees the text and, if given, the semantic tokens; the
  unconditional branch sees `negative_text_emb` (Wan's negative prompt) and no
  semantic tokens unless `semantic_in_uncond`. `fixed_latents` / `frame_mask` fix
  latent frames (TI2V first frame, video continuation) as `sample_flow` describes:
  their tokens get timestep 0. Jit this together with the params.
  """
  model = DiT(config)
  shape = noise.shape

  def velocity_fn(latents, timesteps, cond: dict[str, Any]):
    timesteps = per_token_timesteps(config, timesteps, shape)
    return model.apply({"params": params}, latents.astype(jnp.dtype(config.dtype)), timesteps, **cond)

  semantic_args = {}
  if semantic is not None:
    semantic_args = dict(semantic=semantic, semantic_positions=semantic_positions, semantic_mask=semantic_mask)
  cond = dict(text_emb=text_emb, **semantic_args)
  uncond = None
  if negative_text_emb is not None:
    uncond = dict(text_emb=negative_text_emb, **(semantic_args if semantic_in_uncond else {}))
  return sample_flow(velocity_fn, noise, cond=cond, uncond=uncond, num_steps=num_steps, shift=shift, solver=solver,
                     guidance_scale=guidance_scale, fixed_latents=fixed_latents, frame_mask=frame_mask,
                     callback=callback)


__all__ = ["per_token_timesteps", "sample_latents"]
