"""TempAct's hierarchical planner-executor RL (Sec. 3.3, Eq. 8, 12-16): M plans per prompt, one shared context per
plan, N continuations after the step switch; the planner is updated with GSPO from R_plan, the executor with
Flow-GRPO on the transition chunk only; both train as one `HierarchyExperiment` through `train.loop.train` (stage
"tempact", registered in `train.registry` when this module is imported). Not the losses (the two RL tasks) or the
environment.

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
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from planx_jax.conditioning import first_frame_mask
from planx_jax.losses import rl as rl_losses
from planx_jax.rewards import tempact
from planx_jax.rl import flow_rollout, planner_rollout
from planx_jax.rl.experiment import PromptCursor
from planx_jax.sampling import flow_sde
from planx_jax.train import defaults
from planx_jax.train.experiment import Experiment
from planx_jax.train.registry import register_experiment

STAGE = "tempact"


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


def rollout(planner_exp: Experiment, executor_exp: Experiment, env, planner_params, planner_ref,
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


def default_config() -> ml_collections.ConfigDict:
  """The TempAct config schema (Sec. 3.3): the shared run sections, the planner's GSPO and the executor's Flow-GRPO
  stage configs, and the hierarchy (rewards and prompts from planner_rl.env). Checkpoints are written in the step
  that reaches them (synchronously) and every step is logged."""
  c = defaults.run_config(STAGE)
  c.planner_rl = defaults.base_config("planner_grpo")
  c.executor_rl = defaults.base_config("dit_flow_grpo")
  c.hierarchy = ml_collections.ConfigDict({
      "prompts_per_step": 2,
      "switch_min": 1, "switch_max": 2,  # the last context latent frame k, drawn per step (TempAct: k in [6, 12])
      "chunk_frames": 1,  # latent frames after the switch the executor is updated on (TempAct: the first chunk)
      "judge_weight": 0.15, "video_weight": 0.85})  # R_plan = 0.15 R_judge + 0.85 mean_n R_video
  c.checkpoint.update({"every": 10, "keep": 2, "async_save": False})
  c.log.every = 1
  return c


class HierarchyExperiment:
  """TempAct's two models as one experiment for `train.loop.train` (resume, SIGTERM save, profiling, export):
  the state is {"planner": TrainState, "executor": TrainState}, a step's batch is one hierarchical rollout's rows
  for both, and a step updates both (planner GSPO, executor Flow-GRPO). One checkpoint holds both states and the
  prompt cursor; metrics are logged as planner/... and executor/..., "loss" is their sum."""

  default_config = staticmethod(default_config)

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    defaults.check_keys(config)
    self.config, self.stage = config, config.stage
    self.prompts_per_step = check_groups(config)
    self.parts = {"planner": Experiment(config.planner_rl, devices),
                  "executor": Experiment(config.executor_rl, devices)}
    self.env = self.parts["planner"].source.environment()
    self.parts["executor"].source.env = self.env
    self.mesh = self.parts["planner"].mesh
    self.examples_per_step = self.parts["planner"].examples_per_step  # plans
    self.last_rollout: HierarchyRollout | None = None

  def abstract_state(self) -> dict:
    return {name: exp.abstract_state() for name, exp in self.parts.items()}

  def init_state(self) -> dict:
    return {name: exp.init_state() for name, exp in self.parts.items()}

  def data_iterator(self, process_index: int | None = None, process_count: int | None = None) -> PromptCursor:
    return PromptCursor(self.prompts_per_step, jax.process_index() if process_index is None else process_index,
                        jax.process_count() if process_count is None else process_count)

  def next_batch(self, cursor: PromptCursor, state: dict) -> dict:
    """One hierarchical rollout of the cursor's next prompts with both policies in `state`: the two global batches."""
    planner, executor = self.parts["planner"], self.parts["executor"]
    indices = next(cursor)
    step = int(jax.device_get(state["planner"].step))
    out = rollout(planner, executor, self.env, *planner.source.policy(state["planner"]),
                  *executor.source.policy(state["executor"]), indices, planner.source.rollout_key(step),
                  self.config.hierarchy)
    self.last_rollout = out
    return {"planner": planner.global_batch(out.planner_rows), "executor": executor.global_batch(out.executor_rows)}

  def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    new_state, metrics = {}, {}
    for name, exp in self.parts.items():
      new_state[name], part_metrics = exp.train_step(state[name], batch[name])
      metrics.update({f"{name}/{key}": value for key, value in part_metrics.items()})
    metrics["loss"] = metrics["planner/loss"] + metrics["executor/loss"]
    return new_state, metrics

  def model_flops_per_step(self) -> float:
    return sum(exp.model_flops_per_step() for exp in self.parts.values())

  def export(self, state: dict, directory) -> None:
    """Each model's export (HF planner, diffusers DiT) in directory/planner and directory/executor."""
    for name, exp in self.parts.items():
      exp.export(state[name], Path(directory) / name)

  def describe_params(self) -> str:
    return "\n".join(f"{name}:\n{exp.describe_params()}" for name, exp in self.parts.items())


register_experiment(STAGE, HierarchyExperiment)
