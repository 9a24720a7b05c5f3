"""The Plan-X training record: one clip's texts, TA-Tok keyframe codes, VAE latents and umT5 states.

Defines the field names, dtypes and per-dataset shapes, and checks a record against them; it does not read files
(see `tfds_builder`) or build batches (see `pipeline`).
"""

import dataclasses
from typing import Any, Mapping

import numpy as np

from planx_jax.config_utils import ConfigMixin
from planx_jax.plan_tokens import CODES_PER_SCALE

TEXT_FIELDS = ("image_description", "video_prompt")
CODE_FIELDS = ("codes_s0", "codes_s2")
FLOAT_FIELDS = ("latents", "text_emb")
FIELDS = ("image_description", "video_prompt", "codes_s0", "has_first_frame", "codes_s2", "latents", "text_emb")
FIRST_FRAME_CODES = CODES_PER_SCALE[0]  # 729: keyframe 0 at TA-Tok scale 0 (27x27)
PLAN_FRAME_CODES = CODES_PER_SCALE[2]  # 81: every keyframe at TA-Tok scale 2 (9x9)

Record = dict[str, Any]


def _positive_ints(name: str, value, length: int) -> tuple[int, ...]:
  values = tuple(value) if isinstance(value, (tuple, list)) else None
  if (
      values is None
      or len(values) != length
      or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values)
  ):
    raise ValueError(f"{name} must be {length} positive ints, got {value!r}")
  return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class RecordShapes(ConfigMixin):
  """The shapes every record of one dataset shares.

  Attributes:
    num_keyframes: K keyframes per clip at 2 FPS, keyframe 0 = video frame 0 (K >= 2: the planner plans K-1).
    latent_shape: (F, H, W, C) of the Wan VAE latents, channels-last.
    text_shape: (T, text_dim) of the zero-padded umT5 states.
  """

  num_keyframes: int
  latent_shape: tuple[int, int, int, int]
  text_shape: tuple[int, int]

  PRESETS = ("tiny",)

  def __post_init__(self):
    k = self.num_keyframes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
      raise ValueError(f"num_keyframes K must be an int >= 2 (the first frame plus planned keyframes), got {k!r}")
    object.__setattr__(self, "num_keyframes", int(k))
    object.__setattr__(self, "latent_shape", _positive_ints("latent_shape (F, H, W, C)", self.latent_shape, 4))
    object.__setattr__(self, "text_shape", _positive_ints("text_shape (T, text_dim)", self.text_shape, 2))

  @classmethod
  def tiny(cls, **overrides) -> "RecordShapes":
    return cls.from_dict({"num_keyframes": 3, "latent_shape": (4, 8, 8, 8), "text_shape": (8, 32), **overrides})

  def array_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every non-text field, in `FIELDS` order."""
    return {
        "codes_s0": ((FIRST_FRAME_CODES,), np.dtype(np.int32)),
        "has_first_frame": ((), np.dtype(np.bool_)),
        "codes_s2": ((self.num_keyframes, PLAN_FRAME_CODES), np.dtype(np.int32)),
        "latents": (self.latent_shape, np.dtype(np.float32)),
        "text_emb": (self.text_shape, np.dtype(np.float32)),
    }


def check_codebook_size(codebook_size) -> int:
  if isinstance(codebook_size, bool) or not isinstance(codebook_size, (int, np.integer)) or codebook_size < 1:
    raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
  return int(codebook_size)


def _array(where: str, name: str, value, shape: tuple[int, ...]) -> np.ndarray:
  if not isinstance(value, np.ndarray):
    raise ValueError(f"{where}{name} must be a numpy array, got {type(value).__name__}")
  if value.shape != shape:
    raise ValueError(f"{where}{name} must have shape {list(shape)}, got {list(value.shape)}")
  return value


def _codes(where: str, name: str, value, shape: tuple[int, ...], codebook_size: int) -> np.ndarray:
  arr = _array(where, name, value, shape)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{where}{name} must hold integer codes, got dtype {arr.dtype}")
  bad = (arr < 0) | (arr >= codebook_size)
  if bad.any():
    position = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{where}{name}{list(position)} = {int(arr[position])} is outside the codebook [0, {codebook_size})"
    )
  return arr.astype(np.int32)


def _floats(where: str, name: str, value, shape: tuple[int, ...]) -> np.ndarray:
  arr = _array(where, name, value, shape)
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{where}{name} must be a float array (stored as float32), got dtype {arr.dtype}")
  finite = np.isfinite(arr)
  if not finite.all():
    position = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise ValueError(f"{where}{name}{list(position)} is not finite ({arr[position]})")
  return arr.astype(np.float32)


def check_record(record: Mapping[str, Any], shapes: RecordShapes, codebook_size: int, index=None) -> Record:
  """Checks one record against the schema and returns a copy with the exact dtypes.

  Integer codes of any integer dtype are range-checked and cast to int32; latents and text
  states of any float dtype must be finite and are cast to float32. With `has_first_frame`
  False, `codes_s0` must hold zeros (the planner zeroes those slots).

  Args:
    record: mapping with exactly the keys of `FIELDS`.
    shapes: the dataset's shapes.
    codebook_size: codes must lie in [0, codebook_size).
    index: names the record in errors (an int or a description such as a manifest line).
  """
  codebook_size = check_codebook_size(codebook_size)
  where = "" if index is None else f"record {index}: "
  if not isinstance(record, Mapping):
    raise ValueError(f"{where}a record must be a dict of fields, got {type(record).__name__}")
  missing = [name for name in FIELDS if name not in record]
  unknown = sorted(str(name) for name in record if name not in FIELDS)
  if missing or unknown:
    raise ValueError(f"{where}missing fields {missing} and unknown fields {unknown}; a record has {list(FIELDS)}")
  out: Record = {}
  for name in TEXT_FIELDS:
    value = record[name]
    if not isinstance(value, str) or not value.strip():
      raise ValueError(f"{where}{name} must be a non-empty string, got {value!r}")
    out[name] = value
  has_first_frame = record["has_first_frame"]
  if isinstance(has_first_frame, np.ndarray) and has_first_frame.shape == () and has_first_frame.dtype == np.bool_:
    has_first_frame = has_first_frame[()]
  if not isinstance(has_first_frame, (bool, np.bool_)):
    raise ValueError(f"{where}has_first_frame must be a bool, got {has_first_frame!r}")
  specs = shapes.array_specs()
  for name in CODE_FIELDS:
    out[name] = _codes(where, name, record[name], specs[name][0], codebook_size)
  for name in FLOAT_FIELDS:
    out[name] = _floats(where, name, record[name], specs[name][0])
  if not has_first_frame and out["codes_s0"].any():
    raise ValueError(f"{where}has_first_frame is False but codes_s0 is not all zeros (T2V records hold zeros there)")
  out["has_first_frame"] = np.bool_(has_first_frame)
  return {name: out[name] for name in FIELDS}
