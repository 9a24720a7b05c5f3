"""One record per model component (kind, config class, init, run-time fields, layer stack) and the entry points every
facade exposes from it: init / abstract params, param count, logical axes, planx checkpoint save and load.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax

from planx_jax import model_checkpoints
from planx_jax.models import layer_layout
from planx_jax.models import params as model_params


class Loaded(NamedTuple):
  """What every `load_checkpoint` returns; unpacks as `config, params, meta = load_checkpoint(path)`."""
  config: Any
  params: dict
  meta: dict  # planx.json: kind, format_version, config, and the component's extras (decoded)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model component as the generic entry points see it.

  Exactly one of `boxed_init` (a Flax module's `init` with logical-axis boxes: counts and logical axes come from it)
  and `init` (plain params, e.g. TA-Tok's assembled towers) is given.
  """
  kind: str  # checkpoint kind in planx.json, checked on load
  config_cls: type  # has to_dict / from_dict / replace
  runtime_fields: frozenset[str]  # config fields that do not change the params: overridable on load
  boxed_init: Callable[[Any], model_params.BoxedInit] | None = None  # config -> (rng -> boxed variables)
  init: Callable[[Any, jax.Array], dict] | None = None  # (config, rng) -> params
  layer_stack: str | None = None  # params key of the scanned layer stack (converted to config.scan_layers' layout)

  def __post_init__(self):
    if (self.boxed_init is None) == (self.init is None):
      raise ValueError(f"model spec {self.kind!r} needs exactly one of boxed_init and init")

  def init_params(self, config, rng: jax.Array) -> dict:
    """Random params as a plain nested dict."""
    if self.init is not None:
      return self.init(config, rng)
    return model_params.init_params(self.boxed_init(config), rng)

  def abstract_params(self, config) -> dict:
    """Param tree of `jax.ShapeDtypeStruct`, without allocating anything."""
    if self.init is not None:
      return jax.eval_shape(lambda: self.init(config, jax.random.key(0)))
    return model_params.abstract_params(self.boxed_init(config))

  def param_count(self, config) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract_params(config)))

  def param_logical_axes(self, config) -> dict:
    """Param tree of `PartitionSpec`s over logical axis names ("layers", "embed", "heads", ...)."""
    if self.boxed_init is None:
      raise ValueError(f"{self.kind} params carry no logical axis names (plain init, no Flax boxes)")
    return model_params.param_logical_axes(self.boxed_init(config))

  def to_layout(self, config, params: dict) -> dict:
    """Params in the layer layout `config.scan_layers` names (unchanged for components without a layer stack)."""
    if self.layer_stack is None:
      return params
    return layer_layout.to_layout(params, config.num_layers, config.scan_layers, self.layer_stack)

  def save_checkpoint(self, path: str | os.PathLike, config, params: dict, *, tokenizer=None,
                      extras: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Writes a planx checkpoint directory (params in the layer layout `config.scan_layers` names; `tokenizer`: a
    transformers tokenizer or a directory to copy)."""
    return model_checkpoints.save_model(path, kind=self.kind, config=config.to_dict(),
                                        params=self.to_layout(config, params), extras=extras, tokenizer=tokenizer,
                                        overwrite=overwrite)

  def load_checkpoint(self, path: str | os.PathLike, **config_overrides) -> Loaded:
    """Reads a planx checkpoint directory -> Loaded(config, params, meta).

    Only run-time fields (dtypes, kernels, layer layout) may be overridden: the params are restored into the
    stored architecture's shapes, then converted to the layer layout the (overridden) config names.
    """
    architecture = sorted(set(config_overrides) - set(self.runtime_fields))
    if architecture:
      raise ValueError(f"load_checkpoint cannot override {architecture}: only run-time fields "
                       f"{sorted(self.runtime_fields)} may change after training")
    meta = model_checkpoints.load_meta(path, self.kind)
    stored = self.config_cls.from_dict(meta["config"])
    params = model_checkpoints.restore_params(path, self.abstract_params(stored))
    config = stored.replace(**config_overrides)
    return Loaded(config, self.to_layout(config, params), meta)
