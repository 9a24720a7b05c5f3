"""TempAct's hierarchical planner-executor RL (Sec. 3.3, Eq. 8, 12-16): M plans per prompt, one shared context per
plan, N continuations after the step switch; the planner is updated with GSPO from R_plan, the executor with
Flow-GRPO on the transition chunk only. Not the losses (the two RL tasks) or the environment.

Here the executor is the bidirectional Plan-X DiT reading the plan's TA-Tok codebook vectors through its semantic
branch (TempAct's chunked autoregressive executor is a later issue): the context is the plan's video up to the
switch, generated once per plan by the deterministic sampler; each continuation regenerates the frames after it
with frames 0..k fixed, and only the first `chunk_frames` latent frames after the switch enter the log-probs.

Rewards on the demo world (verifiable stand-ins for TempAct's VLM judges): R_judge = the world plan reward of the
plan's codes, R_video = R_exec = the world video reward (the judge's four metrics) of each continuation;
R_plan = judge_weight R_judge + video_weight mean_n R_video (0.15 / 0.85).
"""

import dataclasses
import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from planx_jax.conditioning import first_frame_mask
from planx_jax.losses import rl as rl_losses
from planx_jax.rewards import tempact
from planx_jax.rl import flow_rollout, planner_rollout
from planx_jax.rl.experiment import PromptCursor, RLExperiment
from planx_jax.sampling import flow_sde
from planx_jax.train.checkpointing import Checkpointer
from planx_jax.train.metrics_writer import MetricsLogger

log = logging.getLogger("planx.rl")


@dataclasses.dataclass(frozen=True)
class Groups:
  """The hierarchy's shapes: P prompts, M plans per prompt, N continuations per plan."""

  prompts: int
  plans: int
  continuations: int


@dataclasses.dataclass(frozen=True)
class HierarchyRollout:
  planner_rows: dict  # [P * M] PlannerGRPO rows
  executor_rows: dict  # [P * M * N * train_steps] DiTFlowGRPO rows
  plan_rewards: np.ndarray  # [P * M] R_plan
  judge_rewards: np.ndarray  # [P * M] R_judge
  video_rewards: np.ndarray  # [P * M, N] R_video (= R_exec)
  switch: int  # the last context latent frame k (frames 0..k shared by a plan's continuations)


def advantages(plan_rewards, video_rewards, groups: Groups, rl) -> tuple[np.ndarray, np.ndarray]:
  """(A_plan [P * M] over each prompt's M plans, A_exec [P * M, N] over each plan's N continuations), Eq. 8."""
  plan_adv, exec_adv = rl_losses.hierarchical_advantages(
      np.asarray(plan_rewards, np.float32), np.asarray(video_rewards, np.float32).reshape(-1, groups.continuations),
      num_plans=groups.plans, scale=rl.advantage_scale, eps=float(rl.advantage_eps), ddof=int(rl.advantage_ddof))
  return np.asarray(plan_adv, np.float32), np.asarray(exec_adv, np.float32)


def chunk_masks(num_frames: int, switch: int, chunk_frames: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
  """(frame_mask, logprob_mask) [rows, F]: frames 0..switch are the fixed context; the `chunk_frames` frames after
  it are the transition chunk whose elements enter the executor's log-probs."""
  if not 0 <= switch < num_frames - 1:
    raise ValueError(f"the step switch must leave a frame to generate: switch {switch}, {num_frames} latent frames")
  frame_mask = np.asarray(first_frame_mask(rows, num_frames, switch + 1))  # 0 on the context frames
  chunk = np.zeros((rows, num_frames), np.float32)
  chunk[:, switch + 1:min(num_frames, switch + 1 + chunk_frames)] = 1.0
  return frame_mask, chunk


@functools.lru_cache(maxsize=4)
def _context_sampler(task):
  rl = task.config.rl

  @jax.jit
  def sample(params, noise, text_emb, fixed, frame_mask, semantic):
    def velocity_fn(x, timesteps, cond):
      del cond
      return task.velocity(params, x, timesteps, text_emb, semantic)

    traj = flow_sde.sample_sde(velocity_fn, noise, jax.random.key(0), num_steps=task.num_sampling_steps,
                               shift=float(rl.shift), kind=rl.sde, noise_level=0.0,
                               sde_steps=np.zeros(task.num_sampling_steps, bool), fixed_latents=fixed,
                               frame_mask=frame_mask, guidance_scale=1.0, keep_means=False)
    return traj.latents[-1]

  return sample


def rollout(planner_exp: RLExperiment, executor_exp: RLExperiment, env, planner_params, planner_ref,
            executor_params, executor_ref, indices, rng, hierarchy) -> HierarchyRollout:
  """One hierarchical rollout of the prompts `indices` (see the module docstring)."""
  p_task, e_task = planner_exp.task, executor_exp.task
  groups = Groups(len(indices), p_task.group_size, e_task.config.rl.group_size)
  k_plan, k_context, k_switch, k_exec = jax.random.split(rng, 4)
  rows, codes, rows_idx, cond, _ = planner_rollout.sample(p_task, env, planner_params, planner_ref, indices, k_plan)
  judge = env.plan_rewards(str(p_task.config.rl.reward), rows_idx, codes)  # [P * M] R_judge
  plan_cond = env.conditions(rows_idx)  # one row per plan
  semantic = env.codebook_semantics(plan_cond, codes).astype(np.float32)  # [P * M, K * 81, D]
  f = plan_cond.fixed_latents.shape[1]
  lo, hi = int(hierarchy.switch_min), int(hierarchy.switch_max)
  switch = int(jax.random.randint(k_switch, (), lo, hi + 1))
  # The shared context: the plan's whole video from the deterministic sampler (frame 0 given).
  noise = jax.random.normal(k_context, plan_cond.fixed_latents.shape, jnp.float32)
  first_only = np.asarray(first_frame_mask(len(rows_idx), f, 1))
  context = np.asarray(_context_sampler(e_task)(executor_params, noise, plan_cond.text_emb,
                                                plan_cond.fixed_latents, first_only, semantic))
  frame_mask, chunk = chunk_masks(f, switch, int(hierarchy.chunk_frames), len(rows_idx))
  video_rewards_of = lambda latents: env.video_rewards(str(e_task.config.rl.reward),
                                                       np.repeat(rows_idx, groups.continuations), latents)
  plan_rewards = {}

  def exec_advantages(video_rewards):  # [P * M * N] -> A_exec, and R_plan on the side
    r_video = np.asarray(video_rewards, np.float32).reshape(-1, groups.continuations)
    r_plan = np.asarray([tempact.plan_reward(float(j), [float(x) for x in v], _plan_weights(hierarchy))
                         for j, v in zip(judge, r_video)],
                        np.float32)
    plan_adv, exec_adv = advantages(r_plan, r_video, groups, e_task.config.rl)
    plan_rewards.update(r_plan=r_plan, r_video=r_video, plan_adv=plan_adv)
    return exec_adv.reshape(-1)

  result = flow_rollout.rollout(e_task, executor_params, executor_ref,
                                {"text_emb": plan_cond.text_emb, "fixed_latents": context, "frame_mask": frame_mask,
                                 "semantic": semantic}, video_rewards_of, k_exec, logprob_mask=chunk,
                                advantage_fn=exec_advantages)
  rows["advantages"] = plan_rewards["plan_adv"]
  rows["rewards"] = plan_rewards["r_plan"]
  return HierarchyRollout(rows, result.rows, plan_rewards["r_plan"], judge, plan_rewards["r_video"], switch)


def _plan_weights(hierarchy) -> tempact.PlanWeights:
  return tempact.PlanWeights(judge=float(hierarchy.judge_weight), video=float(hierarchy.video_weight))


def check_groups(config: ml_collections.ConfigDict) -> int:
  """Prompts per step, after checking that the planner's and the executor's batch sizes agree with it."""
  p, e, h = config.planner_rl, config.executor_rl, config.hierarchy
  m, n, steps = int(p.rl.group_size), int(e.rl.group_size), int(e.rl.train_steps)
  prompts = int(h.prompts_per_step)
  if p.batch_size != prompts * m:
    raise ValueError(f"planner_rl.batch_size must be prompts_per_step x M = {prompts} x {m}, got {p.batch_size}")
  if e.batch_size != prompts * m * n * steps:
    raise ValueError(f"executor_rl.batch_size must be prompts x M x N x train_steps = {prompts} x {m} x {n} x "
                     f"{steps}, got {e.batch_size}")
  if not int(e.rl.semantic_dim):
    raise ValueError("the TempAct executor is a Plan-X DiT: set executor_rl.rl.semantic_dim (the TA-Tok code width)")
  return prompts


def train_tempact(config: ml_collections.ConfigDict, workdir, *, num_steps: int | None = None,
                  progress: bool = True) -> dict:
  """Runs the hierarchy for `num_steps` (default config.num_steps) in workdir/{planner,executor} (checkpoints,
  TensorBoard, metrics.jsonl each); resumes from the last common checkpoint step. Returns the per-step rewards
  ("history"), the final train states and the last `HierarchyRollout`."""
  num_steps = int(config.num_steps if num_steps is None else num_steps)
  prompts = check_groups(config)
  workdir = Path(workdir).absolute()
  exps = {"planner": RLExperiment(config.planner_rl), "executor": RLExperiment(config.executor_rl)}
  env = exps["planner"].environment()
  exps["executor"].env = env
  cursor = PromptCursor(prompts)
  checkpointers = {name: Checkpointer(workdir / name / "checkpoints", save_every=int(config.checkpoint.every),
                                      keep=int(config.checkpoint.keep), async_save=False) for name in exps}
  states, start = {}, 0
  restored = {name: checkpointers[name].restore(exp.abstract_state()) for name, exp in exps.items()}
  if all(r is not None for r in restored.values()) and len({r[0] for r in restored.values()}) == 1:
    for name, (step, state, data_state) in restored.items():
      states[name], start = state, step
    cursor.set_state(restored["planner"][2])
    log.info("tempact: resumed both models from step %d", start)
  else:
    states = {name: exp.init_state() for name, exp in exps.items()}
  loggers = {name: MetricsLogger(workdir / name, start_step=start, num_steps=num_steps,
                                 examples_per_step=exp.config.batch_size,
                                 model_flops_per_step=exp.model_flops_per_step(), devices=list(exp.mesh.devices.flat),
                                 tensorboard=bool(config.log.tensorboard), progress=progress and name == "planner")
             for name, exp in exps.items()}
  history, out = [], None
  try:
    for step in range(start, num_steps):
      params = {}
      for name, exp in exps.items():
        with jax.set_mesh(exp.mesh):
          policy = exp._effective(states[name].params)[exp.task.models[0]]
        ref = exp.reference_params(states[name])
        params[name] = (policy, None if ref is None else ref[exp.task.models[0]])
      indices = next(cursor)
      rng = exps["planner"].rollout_key(step)
      out = rollout(exps["planner"], exps["executor"], env, *params["planner"], *params["executor"], indices, rng,
                    config.hierarchy)
      metrics = {}
      for name, rows in (("planner", out.planner_rows), ("executor", out.executor_rows)):
        exp = exps[name]
        states[name], m = exp.train_step(states[name], exp.global_batch(rows))
        metrics[name] = jax.device_get(m)
        loggers[name].log([(step + 1, metrics[name])])
        loggers[name].step_done()
        if checkpointers[name].should_save(step + 1) or step + 1 == num_steps:
          checkpointers[name].save(step + 1, states[name], cursor.get_state(), exp.config.to_json(), force=True)
      history.append({"step": step + 1, "r_plan": float(out.plan_rewards.mean()),
                      "r_judge": float(out.judge_rewards.mean()), "r_video": float(out.video_rewards.mean()),
                      "switch": out.switch})
  finally:
    for name in exps:
      checkpointers[name].wait_until_finished()
      checkpointers[name].close()
      loggers[name].close()
  return {"history": history, "states": states, "rollout": out}
