"""The interface a Plan-X training stage implements, and what every stage shares: LoRA around the models'
params, the trainable mask, and abstract / logical param trees. Not the loss of any stage (see the stage modules).
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from planx_jax.data import pipeline
from planx_jax.data.records import RecordShapes
from planx_jax.train import lora as lora_lib


class Task:
  """One training stage. Subclasses set `stage`, `models` (param subtrees LoRA may adapt), where batches come
  from (`batch_source`, a name in `train.registry.BATCH_SOURCES`; "data": records in the pipeline's
  `batch_layout`), add their config sections in `add_config(c)` and implement:

  `init_params(rng)` (jittable random init of the stage's param tree), `param_logical_axes()`,
  `pretrained_params()` (host arrays of subtrees loaded from checkpoints, {} for none), `trainable(params)`
  (bool tree), `normalizers(batch)`,
  `loss(params, batch, rng, step, normalizers)` -> (loss, metrics) summing to the full-batch values over
  microbatches, `model_flops(batch_size)`, `export(params, directory)`.
  """

  stage: str = ""
  models: tuple[str, ...] = ()
  batch_source: str = "data"
  batch_layout: str = ""  # a `data.pipeline.LAYOUTS` name (batch_source "data")

  @classmethod
  def add_config(cls, c) -> None:
    """Adds the stage's own config sections, with defaults, to the shared ones (`train.defaults.base_config`)."""

  def __init__(self, config):
    self.config = config
    self.lora_rank = int(config.lora.rank)

  # --- with LoRA around the stage's params ----------------------------------------------------------------
  def full_init(self, rng) -> dict:
    params = self.init_params(jax.random.fold_in(rng, 0))
    if self.lora_rank:
      params["lora"] = {m: lora_lib.init_lora(jax.random.fold_in(rng, 1 + i), self._abstract_model(m),
                                              self.param_logical_axes()[m], rank=self.lora_rank,
                                              targets=tuple(self.config.lora.targets))
                        for i, m in enumerate(self.models)}
    return params

  def full_logical_axes(self) -> dict:
    axes = self.param_logical_axes()
    if self.lora_rank:
      axes = dict(axes)
      axes["lora"] = {m: lora_lib.lora_logical_axes(self._abstract_model(m), axes[m], rank=self.lora_rank,
                                                    targets=tuple(self.config.lora.targets)) for m in self.models}
    return axes

  def abstract_params(self) -> dict:
    return jax.eval_shape(self.full_init, jax.random.key(0))

  def _abstract_model(self, name):
    return jax.eval_shape(lambda: self.init_params(jax.random.key(0)))[name]

  def effective_params(self, params) -> dict:
    """The params the models run with: LoRA factors merged into their kernels."""
    if not self.lora_rank:
      return params
    scale = float(self.config.lora.alpha) / self.lora_rank
    merged = {k: v for k, v in params.items() if k != "lora"}
    for m in self.models:
      merged[m] = lora_lib.merge_lora(params[m], params["lora"][m], scale=scale)
    return merged

  def full_trainable(self, params) -> Any:
    """Bool tree: with LoRA only the factors and the stage's new modules (`always_trainable`) train."""
    if not self.lora_rank:
      return self.trainable(params)
    base = {k: v for k, v in params.items() if k != "lora"}
    mask = self.always_trainable(base)
    mask["lora"] = jax.tree.map(lambda _: True, params["lora"])
    return mask

  def always_trainable(self, params) -> Any:
    return jax.tree.map(lambda _: False, params)

  # --- batches --------------------------------------------------------------------------------------------
  def record_shapes(self) -> RecordShapes:
    s = self.config.data.shapes
    return RecordShapes(num_keyframes=int(s.num_keyframes), latent_shape=tuple(s.latent_shape),
                        text_shape=tuple(s.text_shape))

  def batch_spec(self, batch_size: int) -> dict:
    """{name: (shape, dtype)} of the global batch: the schema the data pipeline produces in `batch_layout`."""
    seq_len = int(self.config.data.seq_len) if self.batch_layout in pipeline.CONVERSATION_LAYOUTS else None
    return pipeline.batch_spec(self.batch_layout, batch_size, seq_len, self.record_shapes())

  def abstract_batch(self, batch_size: int) -> dict:
    return {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for k, (shape, dtype) in
            self.batch_spec(batch_size).items()}

  def batch_logical_axes(self, batch_size: int) -> dict:
    return {k: P("act_batch", *([None] * (len(shape) - 1))) for k, (shape, _) in
            self.batch_spec(batch_size).items()}
