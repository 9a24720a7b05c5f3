"""A deterministic in-memory source of synthetic Plan-X training records, for tests and tiny runs.

Each record is a small moving-object world: texts name the scene and the motion, codes and latents move with it;
it is not real video, and it reads nothing from disk.
"""

import numpy as np

from planx_jax.data.records import FIRST_FRAME_CODES, PLAN_FRAME_CODES, Record, RecordShapes, check_codebook_size

COLORS = ("red", "blue", "green", "white", "yellow", "orange")
OBJECTS = ("ball", "cat", "boat", "car", "bird", "horse", "robot", "train")
PLACES = ("wooden floor", "green park", "quiet street", "calm lake", "white table", "sandy beach")
# Motion phrase -> (rows, cols) the object moves per keyframe.
MOTIONS = (
    ("rolls slowly to the left", (0, -1)),
    ("moves to the right", (0, 1)),
    ("jumps up", (-1, 0)),
    ("falls down", (1, 0)),
    ("stays still", (0, 0)),
)
_GRID = 9  # scale-2 code grid side (9x9 = 81)
_BLOB = 3  # object side in grid cells
_UPSAMPLE = 3  # scale-0 grid (27x27) cells per scale-2 cell
_WORDS = sorted({w for phrase in COLORS + OBJECTS + PLACES + tuple(m for m, _ in MOTIONS) for w in phrase.split()}
                | {"a", "on", "the"})


class SyntheticSource:
  """Random-access records (`len`, `[i]`), a pure function of (seed, index); usable as a grain source.

  Record i shows an object of one colour on a background place; the video prompt moves it one
  grid cell per keyframe. `codes_s2[k]` is the 9x9 scene at keyframe k (background code of the
  place, object code inside a 3x3 blob); `codes_s0` is keyframe 0 upsampled to 27x27, or zeros
  for every 4th record (index % 4 == 3), which has no first frame. Latents carry the same blob,
  moving continuously over the latent frames; `text_emb` holds fixed per-word vectors of the prompt.
  """

  def __init__(self, shapes: RecordShapes, codebook_size: int, num_records: int, seed: int = 0):
    if not isinstance(shapes, RecordShapes):
      raise ValueError(f"shapes must be a RecordShapes, got {type(shapes).__name__}")
    if isinstance(num_records, bool) or not isinstance(num_records, (int, np.integer)) or num_records < 1:
      raise ValueError(f"num_records must be a positive int, got {num_records!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    self.shapes = shapes
    self.codebook_size = check_codebook_size(codebook_size)
    self.num_records = int(num_records)
    self.seed = int(seed)
    table_rng = np.random.default_rng((self.seed, 0x5EED))
    channels = shapes.latent_shape[3]
    self._object_channels = table_rng.normal(size=(len(OBJECTS), channels)).astype(np.float32)  # [O, C]
    self._place_channels = 0.5 * table_rng.normal(size=(len(PLACES), channels)).astype(np.float32)  # [P, C]
    self._word_vectors = table_rng.normal(size=(len(_WORDS), shapes.text_shape[1])).astype(np.float32)  # [V, D]

  def __len__(self) -> int:
    return self.num_records

  def __repr__(self) -> str:
    return f"SyntheticSource(num_records={self.num_records}, seed={self.seed}, shapes={self.shapes})"

  def __getitem__(self, index) -> Record:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise TypeError(f"SyntheticSource indices must be ints, got {index!r}")
    if not 0 <= index < self.num_records:
      raise IndexError(f"record index {index} out of range [0, {self.num_records})")
    index = int(index)
    rng = np.random.default_rng((self.seed, index))
    color, obj, place, motion = (int(rng.integers(n)) for n in (len(COLORS), len(OBJECTS), len(PLACES), len(MOTIONS)))
    phrase, (d_row, d_col) = MOTIONS[motion]
    start = rng.integers(0, _GRID - _BLOB + 1, size=2)  # top-left cell of the blob at keyframe 0
    video_prompt = f"the {COLORS[color]} {OBJECTS[obj]} {phrase}"
    codes_s2 = self._keyframe_codes(color, obj, place, start, (d_row, d_col))
    has_first_frame = index % 4 != 3
    if has_first_frame:
      grid = codes_s2[0].reshape(_GRID, _GRID)
      codes_s0 = np.repeat(np.repeat(grid, _UPSAMPLE, 0), _UPSAMPLE, 1).reshape(FIRST_FRAME_CODES)
    else:
      codes_s0 = np.zeros((FIRST_FRAME_CODES,), np.int32)
    return {
        "image_description": f"a {COLORS[color]} {OBJECTS[obj]} on a {PLACES[place]}",
        "video_prompt": video_prompt,
        "codes_s0": codes_s0.astype(np.int32),
        "has_first_frame": np.bool_(has_first_frame),
        "codes_s2": codes_s2,
        "latents": self._latents(obj, place, start, (d_row, d_col), rng),
        "text_emb": self._text_emb(video_prompt),
    }

  def _keyframe_codes(self, color: int, obj: int, place: int, start, step) -> np.ndarray:
    k = self.shapes.num_keyframes
    background = (7 * place + 1) % self.codebook_size
    object_code = (31 * obj + 5 * color + 3) % self.codebook_size
    codes = np.full((k, _GRID, _GRID), background, np.int32)
    for frame in range(k):
      row, col = (np.clip(start + frame * np.asarray(step), 0, _GRID - _BLOB)).tolist()
      codes[frame, row:row + _BLOB, col:col + _BLOB] = object_code
    return codes.reshape(k, PLAN_FRAME_CODES)  # [K, 81]

  def _latents(self, obj: int, place: int, start, step, rng: np.random.Generator) -> np.ndarray:
    f, h, w, c = self.shapes.latent_shape
    k = self.shapes.num_keyframes
    time = np.linspace(0.0, k - 1, f)  # keyframe time of each latent frame
    centre = (start + _BLOB / 2)[None, :] + time[:, None] * np.asarray(step)[None, :]  # [F, 2] in grid cells
    centre = np.clip(centre, _BLOB / 2, _GRID - _BLOB / 2) * np.array([h, w]) / _GRID  # [F, 2] in latent cells
    rows = np.arange(h)[None, :, None] + 0.5 - centre[:, 0, None, None]  # [F, H, 1]
    cols = np.arange(w)[None, None, :] + 0.5 - centre[:, 1, None, None]  # [F, 1, W]
    radius = max(h, w) * _BLOB / (2 * _GRID)
    blob = np.exp(-(rows**2 + cols**2) / (2 * radius**2))  # [F, H, W]
    latents = self._place_channels[place] + blob[..., None] * self._object_channels[obj]  # [F, H, W, C]
    latents = latents + 0.05 * rng.normal(size=(f, h, w, c))
    return latents.astype(np.float32)

  def _text_emb(self, prompt: str) -> np.ndarray:
    t, d = self.shapes.text_shape
    ids = [_WORDS.index(word) for word in prompt.split()][:t]
    emb = np.zeros((t, d), np.float32)
    emb[:len(ids)] = self._word_vectors[ids]  # [len, D]
    return emb
