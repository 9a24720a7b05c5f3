"""RL batches: the "rollout" batch source an RL stage's `Experiment` finds in `train.registry` (registered when this
module is imported): rollouts of the policy in the current train state (planner GRPO / GSPO plans, DiT Flow-GRPO
transitions) scored by the environment's rewards. The train step, shardings, checkpoints, resume, TensorBoard and
`planx compile` are the SFT machinery unchanged. Not the rollouts themselves.

Resume is exact in its inputs: the prompt cursor is checkpointed with the state and each step's sampling key is
the seed folded with the step, so a resumed run rolls out the same prompts with the same keys.
"""

import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from planx_jax.conditioning import first_frame_mask
from planx_jax.data.tokenizer import planner_tokenizer
from planx_jax.rl import flow_rollout, planner_rollout
from planx_jax.train.registry import register_batch_source

log = logging.getLogger("planx.rl")

# The `planx demo` model each RL stage starts from when env.demo_dir is set and the checkpoint is not.
DEMO_MODELS = {"planner_grpo": ("planner", "planner_sft"), "dit_flow_grpo": ("dit", "dit_sft")}
ROLLOUT_SALT = 0x524C  # separates rollout keys from the train step's keys (which fold the same step)


class PromptCursor:
  """The RL 'data iterator': step s rolls out prompts s P .. s P + P - 1 (P = prompts per step); this process
  takes its contiguous share. Its state is one integer."""

  def __init__(self, prompts_per_step: int, process_index: int = 0, process_count: int = 1):
    if prompts_per_step % process_count:
      raise ValueError(f"{prompts_per_step} prompts per step do not split over {process_count} processes")
    self.prompts_per_step, self.process_index, self.process_count = prompts_per_step, process_index, process_count
    self.next = 0

  def __iter__(self):
    return self

  def __next__(self) -> list[int]:
    share = self.prompts_per_step // self.process_count
    first = self.next + self.process_index * share
    self.next += self.prompts_per_step
    return list(range(first, first + share))

  def get_state(self) -> dict:
    return {"next": self.next}

  def set_state(self, state: dict) -> None:
    self.next = int(state["next"])

  def close(self) -> None:
    pass


def with_demo_models(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose unset model checkpoint points at the `planx demo` output in env.demo_dir."""
  config = ml_collections.ConfigDict(config.to_dict())
  demo_dir = str(config.env.demo_dir)
  if not demo_dir:
    return config
  section, name = DEMO_MODELS[config.stage]
  if config.stage == "dit_flow_grpo" and int(config.rl.semantic_dim):
    name = "dit_stage1"
  if not config[section].checkpoint:
    path = Path(demo_dir).absolute() / "models" / name
    if not path.is_dir():
      raise FileNotFoundError(f"env.demo_dir={demo_dir} has no models/{name}: run `planx demo --out {demo_dir}` "
                              "first, or set the checkpoint explicitly")
    config[section].checkpoint = str(path)
  return config


def build_environment(config, task):
  """The prompts and rewards of `config.env` (only the demo world so far)."""
  env = config.env
  if env.kind != "world":
    raise ValueError(f"env.kind must be 'world' (the demo world's verifiable rewards), got {env.kind!r}")
  from planx_jax.world.environment import WorldEnvironment
  from planx_jax.world.settings import world_config

  settings = world_config()
  for field in ("kmeans_frames", "kmeans_iters"):
    if int(env[field]):
      settings.tatok[field] = int(env[field])
  kwargs = {}
  if config.stage == "planner_grpo":
    tokenizer, plan_tokens = planner_tokenizer(config)
    kwargs = dict(tokenizer=tokenizer, plan_tokens=plan_tokens, num_keyframes=int(config.data.shapes.num_keyframes))
  return WorldEnvironment(env, settings, **kwargs)


class RolloutBatches:
  """The "rollout" batch source of the RL stages: each step's rows are rollouts of the policy in the current train
  state on the prompt cursor's next prompts (planner GRPO / GSPO plans, DiT Flow-GRPO transitions)."""

  @staticmethod
  def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with the policy's checkpoint pointing at the `planx demo` models (`with_demo_models`)."""
    return with_demo_models(config)

  def __init__(self, exp):
    self.exp, self.config, self.task, self.stage = exp, exp.config, exp.task, exp.stage
    self.group_size = int(self.config.rl.group_size)
    self.prompts_per_step = self.config.batch_size // self.task.rows_per_prompt
    self.env = None
    self.last_rollout = None  # the latest rollout and its prompt indices (reports, tests)
    self.last_indices: list[int] = []
    self._reference = None
    self._effective = jax.jit(self.task.effective_params)

  def iterator(self, process_index: int, process_count: int) -> PromptCursor:
    return PromptCursor(self.prompts_per_step, process_index, process_count)

  def environment(self):
    if self.env is None:
      self.env = build_environment(self.config, self.task)
    return self.env

  def reference_params(self, state) -> dict | None:
    """The frozen reference of the KL term: the LoRA base, or the params the run started from (None: beta = 0)."""
    if float(self.config.rl.beta) <= 0:
      return None
    if self.task.lora_rank:
      return {k: v for k, v in state.params.items() if k != "lora"}
    if self._reference is None:
      self._reference = self.exp.initial_params()
    return self._reference

  def policy(self, state) -> tuple[dict, dict | None]:
    """(the policy model's params with LoRA merged, its frozen reference or None) in `state`."""
    model = self.task.models[0]
    with jax.set_mesh(self.exp.mesh):
      policy = self._effective(state.params)[model]
    reference = self.reference_params(state)
    return policy, None if reference is None else reference[model]

  def rollout_key(self, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(int(self.config.seed)), ROLLOUT_SALT), step)

  def rollout(self, indices: list[int], state):
    """Rolls out the policy in `state` on the prompts; returns the planner / flow rollout (host rows)."""
    env = self.environment()
    rng = self.rollout_key(int(jax.device_get(state.step)))
    policy, ref = self.policy(state)
    if self.task.models[0] == "planner":  # the policy samples plans; else a DiT samples videos
      return planner_rollout.rollout(self.task, env, policy, ref, indices, rng)
    if int(self.config.rl.semantic_dim):
      raise ValueError("a Plan-X DiT (rl.semantic_dim > 0) renders plans: train it with the TempAct hierarchy "
                       "(configs/rl_tempact.py), which samples them")
    cond = env.conditions(indices)
    frames = cond.fixed_latents.shape[1]
    inputs = {"text_emb": cond.text_emb, "fixed_latents": cond.fixed_latents,
              "frame_mask": np.asarray(first_frame_mask(len(indices), frames, 1))}
    rows_idx = np.repeat(np.asarray(indices), self.group_size)
    reward = lambda latents: env.video_rewards(str(self.config.rl.reward), rows_idx, latents)
    return flow_rollout.rollout(self.task, policy, ref, inputs, reward, rng)

  def next_rows(self, cursor: PromptCursor, state) -> dict:
    indices = next(cursor)
    result = self.rollout(indices, state)
    self.last_rollout, self.last_indices = result, list(indices)
    log.debug("rollout of step %d: %d prompts, reward mean %.4f (min %.4f, max %.4f)",
              int(jax.device_get(state.step)) + 1, len(indices), float(np.mean(result.rewards)),
              float(np.min(result.rewards)), float(np.max(result.rewards)))
    return result.rows


register_batch_source("rollout", RolloutBatches)
