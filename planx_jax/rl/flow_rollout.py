"""DiT rollouts for Flow-GRPO: N videos per prompt from the SDE sampler (stochastic on a random window of steps,
"fast" mode; deterministic elsewhere), their rewards and group advantages, and the transition rows `DiTFlowGRPO`
trains on. Not the loss (train/tasks/dit_flow_grpo.py).

The old log-probs (and means, for RatioNorm) are recomputed from the stored transitions through the task's own
`transition`, the function the loss differentiates, so the first update is exactly on policy.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.losses import rl as rl_losses
from planx_jax.sampling import flow_sde


@dataclasses.dataclass(frozen=True)
class FlowRollout:
  rows: dict  # the DiTFlowGRPO batch rows (numpy): videos x trained steps
  latents: np.ndarray  # [V, F, h, w, C] final latents of the V = prompts x N videos
  rewards: np.ndarray  # [V]
  window: tuple[int, int]  # (first trained step, number of trained steps)


@functools.lru_cache(maxsize=8)
def _sampler(task, guided_semantic: bool):
  rl = task.config.rl

  @jax.jit
  def sample(params, noise, rng, text_emb, fixed, frame_mask, semantic, sde_steps):
    def velocity_fn(x, timesteps, cond):
      del cond
      return task.velocity(params, x, timesteps, text_emb, semantic if guided_semantic else None)

    level = float(rl.noise_level)
    return flow_sde.sample_sde(velocity_fn, noise, rng, num_steps=task.num_sampling_steps, shift=float(rl.shift),
                               kind=rl.sde, noise_level=level, eta=level, sde_steps=sde_steps,
                               fixed_latents=fixed, frame_mask=frame_mask, guidance_scale=1.0, keep_means=False)

  return sample


@functools.lru_cache(maxsize=8)
def _transition_fn(task):
  def fn(params, rows):
    out = task.transition(params, rows)
    return out.log_prob, out.mean

  return jax.jit(fn)


def rollout(task, params: dict, ref_params: dict | None, cond: dict, reward_fn, rng, *,
            logprob_mask: np.ndarray | None = None, advantage_fn=None) -> FlowRollout:
  """Samples `rl.group_size` videos per prompt and builds the transition rows of the trained window.

  Args:
    task: the `DiTFlowGRPO` task.
    params / ref_params: the policy's and the frozen reference's DiT params (ref None: no KL term).
    cond: per-prompt conditions {"text_emb": [P, Lt, Dt], "fixed_latents": [P, F, h, w, C] (frame 0 given),
      "frame_mask": [P, F] (1 on generated frames), optional "semantic": [P, S, D]}; every row of a group shares
      them (and a TempAct group shares its context frames through fixed_latents / frame_mask).
    reward_fn: final latents [V, F, h, w, C] -> rewards [V] (host).
    logprob_mask: [P, F] latent frames whose elements enter the log-prob (default: the generated frames); TempAct
      passes the transition chunk after the step switch.
    advantage_fn: rewards [V] -> advantages [V] (default: normalised within each prompt's N videos).
  """
  rl = task.config.rl
  n = int(rl.group_size)
  repeat = lambda x: np.repeat(np.asarray(x), n, axis=0)
  text, fixed, frame_mask = (repeat(cond[k]) for k in ("text_emb", "fixed_latents", "frame_mask"))
  semantic = repeat(cond["semantic"]).astype(np.float32) if cond.get("semantic") is not None else None
  lp_mask = frame_mask if logprob_mask is None else repeat(logprob_mask).astype(np.float32) * frame_mask
  videos = text.shape[0]
  k_noise, k_sde, k_window = jax.random.split(rng, 3)
  window = np.asarray(flow_sde.sde_window(int(jax.random.randint(k_window, (), 0, 2**31 - 1)),
                                          task.num_sampling_steps, task.train_steps), bool)  # [T]
  start, size = int(np.argmax(window)), int(window.sum())
  if size != task.train_steps or not window[start:start + size].all():
    raise ValueError(f"sde_window gave steps {np.flatnonzero(window).tolist()}, expected {task.train_steps} "
                     "contiguous ones")
  noise = jax.random.normal(k_noise, fixed.shape, jnp.float32)
  traj = _sampler(task, semantic is not None)(params, noise, k_sde, text, fixed, frame_mask, semantic,
                                              jnp.asarray(window))
  latents = np.asarray(traj.latents)  # [T + 1, V, F, h, w, C]
  sigmas = np.asarray(traj.sigmas, np.float32)  # [T + 1]
  rewards = np.asarray(reward_fn(latents[-1]), np.float32)
  if advantage_fn is None:
    advantages = rl_losses.group_advantages(rewards, n, scale=rl.advantage_scale, eps=float(rl.advantage_eps),
                                            ddof=int(rl.advantage_ddof))
  else:
    advantages = advantage_fn(rewards)
  advantages = np.asarray(advantages, np.float32)
  steps = np.arange(int(start), int(start) + int(size))
  pick = lambda x: np.concatenate([x] * len(steps))  # rows are step-major: [steps x V]
  rows = {"latents": np.concatenate([latents[t] for t in steps]),
          "next_latents": np.concatenate([latents[t + 1] for t in steps]),
          "sigma": np.repeat(sigmas[steps], videos), "sigma_next": np.repeat(sigmas[steps + 1], videos),
          "advantages": pick(advantages).astype(np.float32), "rewards": pick(rewards),
          "text_emb": pick(text).astype(np.float32), "frame_mask": pick(frame_mask).astype(np.float32),
          "logprob_mask": pick(lp_mask).astype(np.float32)}
  if semantic is not None:
    rows["semantic"] = pick(semantic)
  transition = _transition_fn(task)
  inputs = dict(rows)
  old_logp, old_mean = transition(params, inputs)
  rows["old_logp"] = np.asarray(old_logp, np.float32)
  if rl.ratio_norm:
    rows["old_mean"] = np.asarray(old_mean, np.float32)
  if ref_params is not None:
    rows["ref_mean"] = np.asarray(transition(ref_params, inputs)[1], np.float32)
  return FlowRollout(rows, latents[-1], rewards, (int(start), int(size)))
