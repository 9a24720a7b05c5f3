"""An experiment: the stage's task on a mesh, with its sharded train state, the jitted train step (explicit
in / out shardings, donated state), abstract inputs for AOT compiles, and its batch source (records or rollouts,
found by name in `registry`). Not the loop (loop.py) and not checkpoints (checkpointing.py)."""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from planx_jax import parallel
from planx_jax.train import defaults
from planx_jax.train.optimizer import adamw, learning_rate_schedule
from planx_jax.train.registry import EXPERIMENTS, batch_source
from planx_jax.train.state import TrainState, new_state
from planx_jax.train.step import make_train_step, partition
from planx_jax.train.tasks import TASKS


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Config errors that need no devices: unknown keys, bad step / batch numbers."""
  defaults.check_keys(config)
  for name in ("num_steps", "batch_size", "microbatches"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name} must be a positive int, got {value!r}")
  if config.batch_size % config.microbatches:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by microbatches {config.microbatches}")


def _opt_state_shardings(abstract_opt, abstract_trainable, trainable_shardings, mesh):
  """Optimizer-state shardings: every subtree shaped like the trainable params (Adam's mu / nu) takes the params'
  shardings; other leaves (step counts) are replicated."""
  target = jax.tree.structure(abstract_trainable)

  def pick(node):
    if jax.tree.structure(node) == target:
      return trainable_shardings
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), node)

  return jax.tree.map(pick, abstract_opt, is_leaf=lambda n: jax.tree.structure(n) == target)


class Experiment:
  """Built by `build_experiment`; see /work-level docs in the README's training section."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    _check_config(config)
    task_class = TASKS[config.stage]
    source_class = batch_source(task_class.batch_source)
    config = source_class.prepare(config)
    self.config = config
    self.stage = config.stage
    self.examples_per_step = int(config.batch_size)
    self.mesh = parallel.build_mesh(config.mesh.to_dict(), devices, config.dcn_mesh.to_dict())
    self.rules = parallel.make_rules(config.sharding_rules)
    dp = parallel.data_parallel_size(self.mesh)
    micro_rows = config.batch_size // config.microbatches
    if micro_rows % dp:
      raise ValueError(f"batch_size {config.batch_size} / microbatches {config.microbatches} = {micro_rows} rows is "
                       f"not divisible by the data-parallel size {dp} (mesh data x fsdp)")
    self.task = task_class(config)
    self.schedule = learning_rate_schedule(config.optimizer, config.num_steps)
    self.optimizer = adamw(config.optimizer, config.num_steps)

    abstract_params = self.task.abstract_params()
    self.mask = self.task.full_trainable(abstract_params)
    self.param_shardings = parallel.tree_shardings(self.task.full_logical_axes(), abstract_params, self.mesh,
                                                   self.rules)
    abstract_trainable, _ = partition(abstract_params, self.mask)
    trainable_shardings, _ = partition(self.param_shardings, self.mask)
    abstract_opt = jax.eval_shape(self.optimizer.init, abstract_trainable)
    replicated = NamedSharding(self.mesh, P())
    self.state_shardings = TrainState(
        step=replicated, params=self.param_shardings,
        opt_state=_opt_state_shardings(abstract_opt, abstract_trainable, trainable_shardings, self.mesh),
        rng=replicated, skipped=replicated)
    self._abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32), skipped=jax.ShapeDtypeStruct((), jnp.int32))

    batch_logical = self.task.batch_logical_axes(config.batch_size)
    self._abstract_batch_plain = self.task.abstract_batch(config.batch_size)
    self.batch_shardings = parallel.tree_shardings(batch_logical, self._abstract_batch_plain, self.mesh, self.rules)
    batch_axes = dict(self.rules)["act_batch"]

    def constrain_micro(x):  # [M, B / M, ...]: rows stay on their data shard
      return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(None, batch_axes)))

    def constrain_grads(grads):
      return jax.lax.with_sharding_constraint(grads, trainable_shardings)

    step_fn = make_train_step(self.task, self.optimizer, self.schedule, self.mask,
                              microbatches=config.microbatches, constrain_micro=constrain_micro,
                              constrain_grads=constrain_grads)

    def traced_step(state, batch):
      with parallel.activation_sharding(self.mesh, self.rules):
        return step_fn(state, batch)

    self._jit_step = jax.jit(traced_step, in_shardings=(self.state_shardings, self.batch_shardings),
                             out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    trainable_count = sum(x.size for x, m in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(self.mask))
                          if m)
    total = sum(x.size for x in jax.tree.leaves(abstract_params))
    logging.info("%s: %s; %.3g params, %.3g trainable", self.stage, parallel.describe_mesh(self.mesh), total,
                 trainable_count)
    self.source = source_class(self)

  # --- abstract values (AOT compiles) ---------------------------------------------------------------------
  def abstract_state(self) -> TrainState:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self._abstract_state,
                        self.state_shardings)

  def abstract_batch(self) -> dict:
    return {k: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.batch_shardings[k])
            for k, a in self._abstract_batch_plain.items()}

  def lower_train_step(self) -> jax.stages.Lowered:
    with jax.set_mesh(self.mesh):
      return self._jit_step.lower(self.abstract_state(), self.abstract_batch())

  # --- running ------------------------------------------------------------------------------------------
  def initial_params(self) -> dict:
    """Random params (created sharded), then the subtrees the configured checkpoints hold."""
    rng = jax.random.key(int(self.config.seed))
    with jax.set_mesh(self.mesh):
      params = jax.jit(self.task.full_init, out_shardings=self.param_shardings)(rng)
    for name, subtree in self.task.pretrained_params().items():
      expected = jax.tree.map(lambda a: (a.shape, a.dtype), self._abstract_state.params[name])
      got = jax.tree.map(lambda a: (a.shape, a.dtype), subtree)
      if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
        raise ValueError(f"pretrained {name} params do not match the model the config builds")
      params[name] = jax.device_put(subtree, self.param_shardings[name])
    return params

  def init_state(self) -> TrainState:
    """`initial_params`, then the optimizer state."""
    params = self.initial_params()

    def make(params):
      trainable, _ = partition(params, self.mask)
      return new_state(params, self.optimizer.init(trainable), int(self.config.seed))

    with jax.set_mesh(self.mesh):
      return jax.jit(make, in_shardings=(self.param_shardings,), out_shardings=self.state_shardings,
                     donate_argnums=0)(params)

  def train_step(self, state: TrainState, batch: dict):
    with jax.set_mesh(self.mesh):
      return self._jit_step(state, batch)

  def data_iterator(self, process_index: int | None = None, process_count: int | None = None):
    """This process's checkpointable iterator of the batch source (records: `data.pipeline.make_iterator`)."""
    return self.source.iterator(jax.process_index() if process_index is None else process_index,
                                jax.process_count() if process_count is None else process_count)

  def next_batch(self, data, state: TrainState) -> dict:
    """The global batch of the next step from the batch source's iterator `data` (a rollout source samples with
    the policy in `state`)."""
    return self.global_batch(self.source.next_rows(data, state))

  def global_batch(self, local_batch: dict) -> dict:
    """Per-process rows (batch_size / process_count each) -> global arrays with the batch shardings."""
    out = {}
    for name, spec in self._abstract_batch_plain.items():
      if name not in local_batch:
        raise ValueError(f"batch is missing {name!r}; the {self.stage} step needs {sorted(self._abstract_batch_plain)}")
      local = np.asarray(local_batch[name])
      rows = spec.shape[0] // jax.process_count()
      if local.shape != (rows, *spec.shape[1:]) or local.dtype != spec.dtype:
        raise ValueError(f"batch[{name!r}] is {local.dtype}{list(local.shape)}, expected "
                         f"{spec.dtype}{[rows, *spec.shape[1:]]} per process")
      out[name] = jax.make_array_from_process_local_data(self.batch_shardings[name], local, spec.shape)
    return out

  def model_flops_per_step(self) -> float:
    return float(self.task.model_flops(self.config.batch_size))

  def export(self, state: TrainState, directory) -> None:
    """HF / diffusers checkpoints of the trained model(s), LoRA merged; gathered from every process, written
    by process 0."""
    if jax.process_count() > 1:
      params = multihost_utils.process_allgather(state.params, tiled=True)
    else:
      params = jax.device_get(state.params)
    if jax.process_index() == 0:
      self.task.export(params, directory)

  def describe_params(self) -> str:
    return parallel.describe_shardings(self._abstract_state.params, self.param_shardings)


def build_experiment(config: ml_collections.ConfigDict, devices=None):
  """The stage's experiment: a composite one registered for the stage (e.g. TempAct's hierarchy), else an
  `Experiment` of the stage's task."""
  return EXPERIMENTS.get(config.get("stage"), Experiment)(config, devices)
