"""Video files for generated clips: MP4 write / read through imageio-ffmpeg's bundled ffmpeg, PNG contact sheets.

No system ffmpeg is needed (the `imageio-ffmpeg` wheel ships a binary). Frames are
uint8 [T, H, W, 3] or floats in [-1, 1] (what the VAE decodes). No model code here.
"""

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def _quiet_fork():
  """imageio-ffmpeg starts ffmpeg with a fork + exec; Python warns about forking a multithreaded (JAX) process.
  The child only execs ffmpeg, so the warning does not apply here."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*os\.fork\(\) was called.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork.*", category=DeprecationWarning)
    yield


def to_uint8(frames) -> np.ndarray:
  """[T, H, W, 3] uint8, or floats in [-1, 1] (mapped with (x + 1) * 127.5, rounded) -> uint8."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
  if frames.dtype == np.uint8:
    return frames
  if not np.issubdtype(frames.dtype, np.floating):
    raise ValueError(f"frames must be uint8 or floats in [-1, 1], got {frames.dtype}")
  if not np.isfinite(frames).all():
    raise ValueError("frames contain NaN or infinity")
  return np.clip(np.round((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames, fps: float, *, quality: int = 8) -> Path:
  """Writes H.264 (yuv420p, so H and W must be even) at `fps`; returns the path. Written to a temp name first."""
  import imageio_ffmpeg

  frames = to_uint8(frames)
  t, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"H.264 yuv420p needs even frame sizes, got {h}x{w}")
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
  writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                       quality=quality, macro_block_size=1, ffmpeg_log_level="error")
  with _quiet_fork():
    writer.send(None)
  try:
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
  finally:
    writer.close()
  os.replace(tmp, path)
  return path


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """Reads every frame -> (uint8 [T, H, W, 3], fps)."""
  import imageio_ffmpeg

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no video file {path}")
  reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
  with _quiet_fork():
    meta = reader.__next__()
  w, h = meta["size"]
  frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
  return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8), float(meta["fps"])


def contact_sheet(frames, columns: int | None = None, gap: int = 2) -> np.ndarray:
  """Tiles frames row-major into one uint8 image [rows*H + gaps, columns*W + gaps, 3] on a white background."""
  frames = to_uint8(frames)
  t, h, w, _ = frames.shape
  columns = columns or min(t, 8)
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}")
  rows = -(-t // columns)
  sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
  for i, frame in enumerate(frames):
    r, c = divmod(i, columns)
    sheet[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = frame
  return sheet


def write_png(path: str | os.PathLike, image) -> Path:
  from PIL import Image

  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
  path = Path(path)
  Image.fromarray(image).save(path)
  return path
