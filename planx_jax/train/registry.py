"""What `build_experiment` finds by name besides the `TASKS`: batch sources (how an experiment's batches are made,
named by `Task.batch_source`) and composite experiments (several tasks trained together, by stage). Other packages
register theirs when imported (planx_jax.rl: the "rollout" source and the TempAct hierarchy)."""

from planx_jax.train.data_batches import DataBatches

BATCH_SOURCES: dict[str, type] = {"data": DataBatches}
EXPERIMENTS: dict[str, type] = {}  # stage -> a composite experiment class with `default_config()`


def register_batch_source(name: str, source: type) -> None:
  """`source(exp)` makes an experiment's batches: `prepare(config)` (static), `iterator(process_index,
  process_count)` (checkpointable: get_state / set_state / close), `next_rows(iterator, state)`."""
  _register(BATCH_SOURCES, "batch source", name, source)


def register_experiment(stage: str, experiment: type) -> None:
  """`experiment(config, devices)` trains the stage through `train.loop.train`; `experiment.default_config()` is
  the stage's config schema."""
  _register(EXPERIMENTS, "experiment", stage, experiment)


def batch_source(name: str) -> type:
  if name not in BATCH_SOURCES:
    raise ValueError(f"no batch source {name!r} is registered ({sorted(BATCH_SOURCES)}); the package that provides it "
                     "registers it when imported (planx_jax.rl: 'rollout')")
  return BATCH_SOURCES[name]


def _register(registry: dict, kind: str, name: str, value: type) -> None:
  if registry.get(name, value) is not value:
    raise ValueError(f"{kind} {name!r} is already registered as {registry[name].__name__}")
  registry[name] = value
