"""Helpers shared by the frozen model-config dataclasses: strict dict I/O.

Model presets are frozen dataclasses; this module only turns them into and out
of plain dicts (JSON) and rejects keys it does not know, naming them.
"""

import dataclasses
import difflib
from typing import Any, Mapping, TypeVar

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


def config_to_dict(config: Any) -> dict[str, Any]:
  return dataclasses.asdict(config)
