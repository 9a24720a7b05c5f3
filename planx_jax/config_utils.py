"""Helpers shared by the frozen model-config dataclasses: strict dict I/O and named presets.

Model presets are frozen dataclasses; `ConfigMixin` gives each one `from_dict` /
`to_dict` / `replace` / `preset` with unknown keys rejected by name.
"""

import dataclasses
import difflib
from typing import Any, ClassVar, Mapping, TypeVar

T = TypeVar("T")


def unknown_key_error(kind: str, key: str, valid: list[str]) -> ValueError:
  close = difflib.get_close_matches(key, valid, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return ValueError(f"unknown {kind} config key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}")


def config_from_dict(cls: type[T], values: Mapping[str, Any], base: T | None = None) -> T:
  """Builds `cls` from `values` (over `base` if given); unknown keys are errors."""
  valid = [f.name for f in dataclasses.fields(cls)]
  for key in values:
    if key not in valid:
      raise unknown_key_error(cls.__name__, key, valid)
  if base is None:
    return cls(**values)
  return dataclasses.replace(base, **values)


class ConfigMixin:
  """For frozen config dataclasses. `PRESETS` names the classmethods that build presets."""

  PRESETS: ClassVar[tuple[str, ...]] = ()

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], base=None):
    return config_from_dict(cls, values, base)

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-ready values (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()}

  def replace(self, **overrides):
    return self.from_dict(overrides, base=self)

  @classmethod
  def preset(cls, name: str, **overrides):
    if name not in cls.PRESETS:
      raise ValueError(f"unknown {cls.__name__} preset {name!r}; available: {', '.join(cls.PRESETS)}")
    return getattr(cls, name)(**overrides)
