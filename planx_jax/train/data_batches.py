"""The "data" batch source of an experiment: the stage's records (synthetic, or a built TFDS directory) through the
grain pipeline, as this process's checkpointable iterator of batch rows. Not the pipeline itself (data/pipeline.py).
"""

import ml_collections

from planx_jax.data.pipeline import CONVERSATION_LAYOUTS, make_iterator
from planx_jax.data.synthetic import SyntheticSource
from planx_jax.data.tfds_builder import load_dataset
from planx_jax.data.tokenizer import planner_tokenizer


class DataBatches:
  """Batches drawn from the stage's records; built by the experiment from its config and task."""

  @staticmethod
  def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the experiment builds its task from (unchanged: records need no setup)."""
    return config

  def __init__(self, exp):
    self.config, self.task = exp.config, exp.task

  def records(self):
    """The training records: the synthetic source (tests, tiny runs) or a built TFDS directory."""
    data = self.config.data
    if data.source == "synthetic":
      return SyntheticSource(self.task.record_shapes(), int(self.config.codebook_size), int(data.num_records),
                             seed=int(data.shuffle_seed))
    if data.source == "tfds":
      if not data.tfds_dir:
        raise ValueError("data.source='tfds' needs data.tfds_dir (a directory written by the TFDS builder)")
      return load_dataset(data.tfds_dir, split=data.split)
    raise ValueError(f"data.source must be 'synthetic' or 'tfds', got {data.source!r}")

  def iterator(self, process_index: int, process_count: int):
    """This process's checkpointable iterator of per-process batch rows (see `data.pipeline.make_iterator`)."""
    kwargs = {}
    if self.task.batch_layout in CONVERSATION_LAYOUTS:
      tokenizer, plan_tokens = planner_tokenizer(self.config)
      if plan_tokens.vocab_size > self.task.planner_config.vocab_size:
        raise ValueError(f"the tokenizer's Plan-X layout needs {plan_tokens.vocab_size} embedding rows, the planner "
                         f"has {self.task.planner_config.vocab_size}")
      kwargs = dict(seq_len=int(self.config.data.seq_len), tokenizer=tokenizer, plan_tokens=plan_tokens)
    return make_iterator(
        self.records(), stage=self.task.stage, layout=self.task.batch_layout, batch_size=int(self.config.batch_size),
        seed=int(self.config.data.shuffle_seed), shapes=self.task.record_shapes(),
        codebook_size=int(self.config.codebook_size), process_index=process_index, process_count=process_count,
        **kwargs)

  def next_rows(self, iterator, state) -> dict:
    """This process's rows of the next step's batch (the state plays no part: records do not depend on it)."""
    del state
    return next(iterator)
