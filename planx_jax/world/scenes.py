"""The synthetic video world of `planx demo`: coloured shapes on a plain background following multi-step instructions.

Episodes are sampled deterministically from (seed, index, split) and carry their ground-truth trajectories, captions
(Plan-X's image description + video prompt) and renders. Pure numpy; no model code and no judging (see world.judge).
"""

import dataclasses
import zlib

import numpy as np

FRAME_SIZE = 64
NUM_FRAMES = 17
FPS = 8  # keyframes at 2 FPS are frames 0, 4, 8, 12, 16

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 230),
    "yellow": (230, 210, 40), "magenta": (210, 50, 210), "cyan": (40, 200, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"gray": (96, 96, 96), "black": (16, 16, 16), "white": (224, 224, 224)}
SHAPES = ("circle", "square", "triangle")
ACTIONS = ("moves left", "moves right", "moves up", "moves down", "jumps")
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit (row, col) displacement of each move
    "moves left": (0.0, -1.0), "moves right": (0.0, 1.0), "moves up": (-1.0, 0.0), "moves down": (1.0, 0.0),
}
MOVE = 16.0  # px a move displaces the centre over its step window
JUMP = 16.0  # px a jump rises at mid-window (parabolic, back where it started)
OBJECT_SIZE = 14  # nominal px across
EXTENT = 10.0  # px from the centre to the farthest pixel of any shape (the triangle's apex)
MARGIN = 1.0  # extra px kept free at the frame border by sampling
MIN_DISTANCE = 18.0  # sampled centres stay this far apart in max-norm at every frame (so shapes never overlap)
MAX_OBJECTS = 3
MAX_STEPS = 3
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("red", "jumps"), ("green", "moves left"), ("blue", "moves right"), ("yellow", "moves up"),
    ("magenta", "moves down"), ("cyan", "jumps"),
})
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class WorldObject:
  color: str
  shape: str
  start: tuple[float, float]  # centre (row, col) in px at frame 0

  def __post_init__(self):
    if self.color not in PALETTE:
      raise ValueError(f"unknown colour {self.color!r}; expected one of {sorted(PALETTE)}")
    if self.shape not in SHAPES:
      raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
    if len(self.start) != 2:
      raise ValueError(f"start must be a (row, col) centre, got {self.start!r}")

  @property
  def name(self) -> str:
    return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Step:
  obj: int  # index into Episode.objects
  action: str

  def __post_init__(self):
    if self.action not in ACTIONS:
      raise ValueError(f"unknown action {self.action!r}; expected one of {ACTIONS}")


@dataclasses.dataclass(frozen=True)
class Episode:
  background: str
  objects: tuple[WorldObject, ...]
  steps: tuple[Step, ...]
  num_frames: int = NUM_FRAMES
  size: int = FRAME_SIZE

  def __post_init__(self):
    if self.background not in BACKGROUNDS:
      raise ValueError(f"unknown background {self.background!r}; expected one of {sorted(BACKGROUNDS)}")
    if not 1 <= len(self.objects) <= len(PALETTE):
      raise ValueError(f"an episode needs 1..{len(PALETTE)} objects, got {len(self.objects)}")
    colors = [o.color for o in self.objects]
    if len(set(colors)) != len(colors):
      raise ValueError(f"object colours must be unique within a scene, got {colors}")
    if not 1 <= len(self.steps) <= MAX_STEPS:
      raise ValueError(f"an episode needs 1..{MAX_STEPS} steps, got {len(self.steps)}")
    for step in self.steps:
      if not 0 <= step.obj < len(self.objects):
        raise ValueError(f"step object index {step.obj} out of range for {len(self.objects)} objects")
    if self.num_frames < len(self.steps) + 1:
      raise ValueError(f"num_frames={self.num_frames} is too few for {len(self.steps)} steps")
    if self.size < 2 * EXTENT + 1:
      raise ValueError(f"size={self.size} is too small for {OBJECT_SIZE}px objects")
    centres = trajectories(self)
    if centres.min() < EXTENT or centres.max() > self.size - 1 - EXTENT:
      raise ValueError(f"trajectories leave the {self.size}x{self.size} frame (centres must stay within "
                       f"[{EXTENT}, {self.size - 1 - EXTENT}] px)")

  @property
  def image_description(self) -> str:
    """T_img: the static scene, e.g. 'a red circle and a blue square on a gray background'."""
    names = [f"a {o.name}" for o in self.objects]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on a {self.background} background"

  @property
  def video_prompt(self) -> str:
    """T_motion: what happens, e.g. 'the red circle moves right, then the blue square jumps'."""
    return ", then ".join(f"the {self.objects[s.obj].name} {s.action}" for s in self.steps)

  def to_json(self) -> dict:
    return {"background": self.background,
            "objects": [{"color": o.color, "shape": o.shape, "start": [float(v) for v in o.start]}
                        for o in self.objects],
            "steps": [{"obj": s.obj, "action": s.action} for s in self.steps],
            "num_frames": self.num_frames, "size": self.size}

  @classmethod
  def from_json(cls, data: dict) -> "Episode":
    try:
      objects = tuple(WorldObject(o["color"], o["shape"], (float(o["start"][0]), float(o["start"][1])))
                      for o in data["objects"])
      steps = tuple(Step(int(s["obj"]), s["action"]) for s in data["steps"])
      return cls(data["background"], objects, steps, int(data.get("num_frames", NUM_FRAMES)),
                 int(data.get("size", FRAME_SIZE)))
    except (KeyError, TypeError, IndexError) as err:
      raise ValueError(f"not an episode description ({type(err).__name__}: {err}): {data!r}") from None


def step_windows(num_steps: int, num_frames: int) -> list[tuple[int, int]]:
  """Inclusive frame windows [start, end] of each step; consecutive steps share their boundary frame."""
  if num_steps < 1 or num_frames < num_steps + 1:
    raise ValueError(f"cannot split {num_frames} frames into {num_steps} steps")
  base, extra = divmod(num_frames - 1, num_steps)
  windows, start = [], 0
  for s in range(num_steps):
    end = start + base + (1 if s < extra else 0)
    windows.append((start, end))
    start = end
  return windows


def trajectories(episode: Episode) -> np.ndarray:
  """Ground-truth centres (row, col) [T, n_obj, 2] float64; only the current step's object moves."""
  return _centres(np.array([o.start for o in episode.objects], np.float64), episode.steps, episode.num_frames)


def _centres(starts: np.ndarray, steps: tuple[Step, ...], num_frames: int) -> np.ndarray:
  """starts [n, 2] -> centres [T, n, 2] after the steps."""
  position = starts.copy()
  out = np.repeat(position[None], num_frames, axis=0)  # [T, n, 2]
  for step, (a, b) in zip(steps, step_windows(len(steps), num_frames)):
    frac = (np.arange(a, b + 1) - a) / (b - a)  # [b - a + 1]
    if step.action == "jumps":
      offset = np.stack([-JUMP * 4.0 * frac * (1.0 - frac), np.zeros_like(frac)], -1)
    else:
      offset = frac[:, None] * MOVE * np.array(DIRECTIONS[step.action])
    origin = position.copy()
    out[a:b + 1] = origin
    out[a:b + 1, step.obj] = origin[step.obj] + offset
    position = out[b].copy()
    out[b:] = position
  return out


def shape_mask(shape: str, centre, size: int) -> np.ndarray:
  """Boolean [size, size] mask of a filled shape whose pixel centroid sits at `centre` (row, col)."""
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  dr, dc = rows - centre[0], cols - centre[1]
  if shape == "circle":
    return dr * dr + dc * dc <= 7.5 ** 2
  if shape == "square":
    return (np.abs(dr) <= 6.5) & (np.abs(dc) <= 6.5)
  if shape == "triangle":  # apex up, height 15, base 15; centroid two thirds down from the apex
    depth = dr + EXTENT  # 0 at the apex, 15 at the base
    return (depth >= 0) & (depth <= 15) & (np.abs(dc) <= depth * 0.5)
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(episode: Episode) -> np.ndarray:
  """uint8 [T, H, W, 3]: objects drawn in list order over the background."""
  centres = trajectories(episode)
  frames = np.empty((episode.num_frames, episode.size, episode.size, 3), np.uint8)
  frames[...] = BACKGROUNDS[episode.background]
  for t in range(episode.num_frames):
    for i, obj in enumerate(episode.objects):
      frames[t][shape_mask(obj.shape, centres[t, i], episode.size)] = PALETTE[obj.color]
  return frames


def _rng(seed: int, index: int, split: str) -> np.random.Generator:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if index < 0:
    raise ValueError(f"episode index must be >= 0, got {index}")
  return np.random.default_rng([seed, index, zlib.crc32(split.encode())])


def _sample_steps(rng: np.random.Generator, colors: list[str], split: str) -> tuple[Step, ...]:
  num_steps = int(rng.integers(1, 3))
  forced = int(rng.integers(num_steps)) if split == "heldout" else -1
  steps = []
  for s in range(num_steps):
    obj = int(rng.integers(len(colors)))
    if s == forced:
      action = next(a for c, a in sorted(HELD_OUT) if c == colors[obj])
    else:
      allowed = [a for a in ACTIONS if split == "heldout" or (colors[obj], a) not in HELD_OUT]
      action = allowed[int(rng.integers(len(allowed)))]
    steps.append(Step(obj, action))
  return tuple(steps)


def _well_separated(centres: np.ndarray) -> bool:
  """centres [T, n, 2]: every pair at least MIN_DISTANCE apart in max-norm at every frame."""
  gaps = np.abs(centres[:, :, None] - centres[:, None, :]).max(-1)  # [T, n, n]
  off_diagonal = ~np.eye(centres.shape[1], dtype=bool)
  return bool((gaps[:, off_diagonal] >= MIN_DISTANCE).all())


def sample_episode(seed: int, index: int, split: str) -> Episode:
  """Deterministic episode number `index` of a split: 2-3 objects, 1-2 steps, in bounds with a margin, no overlap."""
  rng = _rng(seed, index, split)
  low, high = EXTENT + MARGIN, FRAME_SIZE - 1 - EXTENT - MARGIN
  while True:
    num_objects = int(rng.integers(2, MAX_OBJECTS + 1))
    colors = [str(c) for c in rng.choice(list(PALETTE), num_objects, replace=False)]
    shapes = [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=num_objects)]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    steps = _sample_steps(rng, colors, split)
    relative = _centres(np.zeros((num_objects, 2)), steps, NUM_FRAMES)  # [T, n, 2] displacement from the start
    lo, hi = np.ceil(low - relative.min(0)), np.floor(high - relative.max(0))  # [n, 2] feasible integer starts
    if (lo > hi).any():
      continue
    for _ in range(200):
      starts = rng.integers(lo, hi + 1).astype(np.float64)  # [n, 2]
      if _well_separated(starts[None] + relative):
        objects = tuple(WorldObject(c, s, (float(r), float(q))) for c, s, (r, q) in zip(colors, shapes, starts))
        return Episode(background, objects, steps)


class WorldSource:
  """Random access to the episodes of one split: `source[i] == sample_episode(seed, i, split)`."""

  def __init__(self, seed: int, split: str, num_episodes: int):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if num_episodes < 1:
      raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    self.seed, self.split, self.num_episodes = seed, split, num_episodes

  def __len__(self) -> int:
    return self.num_episodes

  def __getitem__(self, index: int) -> Episode:
    if not -self.num_episodes <= index < self.num_episodes:
      raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
    return sample_episode(self.seed, index % self.num_episodes, self.split)
