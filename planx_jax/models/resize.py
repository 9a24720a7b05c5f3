"""Image / grid resizing with PyTorch's `F.interpolate` semantics (align_corners=False) as constant matrices.

Each method is a per-axis [out, in] weight matrix applied separably with two einsums (fp32,
HIGHEST precision). Not a general image library: no align_corners=True, no nearest, no padding modes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("bilinear", "bilinear_antialias", "bicubic", "bicubic_antialias")
BICUBIC_A = -0.75  # torch's bicubic (antialias=False) kernel parameter
BICUBIC_AA_A = -0.5  # torch's antialiased bicubic filter (Keys' original parameter)


def _check(method: str, *sizes: int) -> None:
  if method not in METHODS:
    raise ValueError(f"unknown resize method {method!r}; available: {', '.join(METHODS)}")
  for size in sizes:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"resize sizes must be positive ints, got {size!r}")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel at |x| (zero outside [-2, 2]), in x's dtype."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.where(x <= 1, near, np.where(x < 2, far, 0)).astype(x.dtype)


def _triangle(x: np.ndarray) -> np.ndarray:
  return np.maximum(0.0, 1.0 - np.abs(x))


def _source_index(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(floor, fraction) of src = (dst + 0.5) * in/out - 0.5, in fp32 as torch's CPU kernels compute it for
  fp32 tensors (so large downsampling factors round the same way)."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  src = scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)  # [out]
  return src, np.floor(src).astype(np.int64)


def _bilinear(in_size: int, out_size: int) -> np.ndarray:
  """src clamped at 0; weights (1 - frac, frac) on floor(src) and its right neighbour (clamped to the border)."""
  src, _ = _source_index(in_size, out_size)
  src = np.maximum(src, np.float32(0))
  left = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  frac = np.clip(src - left.astype(np.float32), np.float32(0), np.float32(1))
  right = np.minimum(left + 1, in_size - 1)
  matrix = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, left), np.float32(1) - frac)
  np.add.at(matrix, (rows, right), frac)
  return matrix


def _bicubic(in_size: int, out_size: int) -> np.ndarray:
  """Four taps around floor(src) (src not clamped), A = -0.75, tap indices clamped to the border."""
  src, base = _source_index(in_size, out_size)
  base = np.minimum(base, in_size - 1)
  frac = np.clip(src - base.astype(np.float32), np.float32(0), np.float32(1))
  one = np.float32(1)
  distances = (frac + one, frac, one - frac, (one - frac) + one)  # to taps base - 1, base, base + 1, base + 2
  matrix = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  for tap, distance in enumerate(distances):
    weight = _cubic(distance, np.float32(BICUBIC_A))
    np.add.at(matrix, (rows, np.clip(base + tap - 1, 0, in_size - 1)), weight)
  return matrix


def _antialias(in_size: int, out_size: int, filter_fn, half_width: float) -> np.ndarray:
  """torch's antialiased kernels: the filter is widened by the scale when downsampling, taps are the
  in-range pixels whose centres fall in the support, and each row's weights are normalised to sum 1."""
  scale = in_size / out_size
  support = half_width * scale if scale >= 1 else half_width
  inv_scale = 1.0 / scale if scale >= 1 else 1.0
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(math.trunc(center - support + 0.5), 0)
    hi = min(math.trunc(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    weights = filter_fn((taps - center + 0.5) * inv_scale)
    total = weights.sum()
    matrix[i, lo:hi] = weights / total if total != 0 else weights
  return matrix


_BUILDERS = {
    "bilinear": _bilinear,
    "bicubic": _bicubic,
    "bilinear_antialias": lambda n, m: _antialias(n, m, _triangle, 1.0),
    "bicubic_antialias": lambda n, m: _antialias(n, m, lambda x: _cubic(x, BICUBIC_AA_A), 2.0),
}


@functools.lru_cache(maxsize=256)
def _cached_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  matrix = _BUILDERS[method](in_size, out_size)
  matrix.setflags(write=False)
  return matrix


def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """[out_size, in_size] float64 weights (read-only, cached): `out = M @ in` along one axis, as
  `torch.nn.functional.interpolate(mode=..., align_corners=False)` computes it.

  Methods: "bilinear", "bicubic" (antialias=False, A=-0.75; source positions and weights rounded
  through fp32 as torch does for fp32 inputs), "bilinear_antialias", "bicubic_antialias"
  (antialias=True; torch's aa bicubic uses A=-0.5). Equal sizes give the identity.
  """
  _check(method, in_size, out_size)
  return _cached_matrix(int(in_size), int(out_size), method)


def _resize_hw(x: jax.Array, size: tuple[int, int], method: str, spec_h: str, spec_w: str) -> jax.Array:
  if not isinstance(size, (tuple, list)) or len(size) != 2:
    raise ValueError(f"size must be (height, width), got {size!r}")
  out_h, out_w = size
  in_h, in_w = x.shape[-3], x.shape[-2]
  _check(method, out_h, out_w)
  if in_h < 1 or in_w < 1:
    raise ValueError(f"cannot resize an empty grid of shape {tuple(x.shape)}")
  mat_h = jnp.asarray(resize_matrix(in_h, out_h, method), jnp.float32)  # [h', H]
  mat_w = jnp.asarray(resize_matrix(in_w, out_w, method), jnp.float32)  # [w', W]
  highest = jax.lax.Precision.HIGHEST
  y = jnp.einsum(spec_h, mat_h, x.astype(jnp.float32), precision=highest)  # rows resized
  y = jnp.einsum(spec_w, mat_w, y, precision=highest)  # columns resized
  return y.astype(x.dtype)


def resize_images(x: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
  """[B, H, W, C] -> [B, h, w, C] with torch `interpolate` semantics; computed in fp32, returns x's dtype."""
  if x.ndim != 4:
    raise ValueError(f"resize_images expects [B, H, W, C], got shape {tuple(x.shape)}")
  return _resize_hw(x, size, method, "oh,bhwc->bowc", "pw,bowc->bopc")  # [B, h, W, C] -> [B, h, w, C]


def resize_grid(table: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
  """[h, w, C] -> [h', w', C] (a position table laid out on its grid); same numerics as `resize_images`."""
  if table.ndim != 3:
    raise ValueError(f"resize_grid expects [h, w, C], got shape {tuple(table.shape)}")
  return _resize_hw(table, size, method, "oh,hwc->owc", "pw,owc->opc")  # [h', w, C] -> [h', w', C]
