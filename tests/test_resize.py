"""Resize matrices against torch.nn.functional.interpolate (align_corners=False) for every method, up and down,
odd sizes; identity at equal sizes, dtype handling, caching and named errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from planx_jax.models.resize import METHODS, resize_grid, resize_images, resize_matrix

# (input H, W) -> (output h, w): up- and down-sampling per axis, odd ratios, big factors.
CASES = [
    ((16, 16), (27, 13)),
    ((16, 27), (9, 13)),
    ((27, 5), (13, 384)),
    ((384, 7), (54, 7)),
    ((5, 3), (2, 11)),
]


def _torch_resize(x: np.ndarray, size, method: str) -> np.ndarray:
  mode = method.removesuffix("_antialias")
  y = F.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=size, mode=mode, align_corners=False,
                    antialias=method.endswith("_antialias"))
  return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("in_hw,out_hw", CASES)
def test_matches_torch_interpolate(method, in_hw, out_hw):
  x = np.random.RandomState(sum(in_hw) + sum(out_hw)).randn(2, *in_hw, 3).astype(np.float32)
  ours = resize_images(jnp.asarray(x), out_hw, method)
  assert ours.shape == (2, *out_hw, 3) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), _torch_resize(x, out_hw, method), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_matrices_are_torch_impulse_responses(method):
  for n, m in ((16, 27), (16, 13), (16, 9), (27, 13), (5, 384), (384, 54), (1, 4), (4, 1)):
    impulses = torch.eye(n)[None, None]  # [1, 1, n, n]: row j is the j-th impulse along W
    # (widths are resized, heights kept: torch's antialiased kernels mishandle a 1 -> 1 axis.)
    response = F.interpolate(impulses, size=(n, m), mode=method.removesuffix("_antialias"), align_corners=False,
                             antialias=method.endswith("_antialias"))[0, 0]  # [n, m]
    np.testing.assert_allclose(resize_matrix(n, m, method), response.numpy().T, atol=1e-6, rtol=0,
                               err_msg=f"{method} {n}->{m}")


@pytest.mark.parametrize("method", METHODS)
def test_equal_sizes_are_the_identity(method):
  for n in (1, 2, 9, 27):
    np.testing.assert_array_equal(resize_matrix(n, n, method), np.eye(n))
  x = jnp.asarray(np.random.RandomState(0).randn(1, 9, 7, 2), jnp.float32)
  np.testing.assert_array_equal(np.asarray(resize_images(x, (9, 7), method)), np.asarray(x))


def test_matrices_are_cached_and_read_only():
  a = resize_matrix(16, 27, "bicubic")
  assert a is resize_matrix(16, 27, "bicubic") and a.shape == (27, 16) and a.dtype == np.float64
  with pytest.raises(ValueError, match="read-only"):
    a[0, 0] = 1.0


def test_grid_matches_images_and_dtype_is_kept():
  table = np.random.RandomState(1).randn(16, 16, 5).astype(np.float32)
  grid = resize_grid(jnp.asarray(table), (27, 9), "bilinear_antialias")
  batched = resize_images(jnp.asarray(table[None]), (27, 9), "bilinear_antialias")
  np.testing.assert_allclose(np.asarray(grid), np.asarray(batched)[0], atol=1e-6, rtol=0)
  bf16 = resize_images(jnp.asarray(table[None], jnp.bfloat16), (13, 13), "bicubic")
  assert bf16.dtype == jnp.bfloat16
  full = resize_images(jnp.asarray(table[None], jnp.bfloat16).astype(jnp.float32), (13, 13), "bicubic")
  np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(full), rtol=1e-2, atol=1e-2)
  jitted = jax.jit(resize_images, static_argnums=(1, 2))(jnp.asarray(table[None]), (13, 13), "bicubic")
  np.testing.assert_allclose(np.asarray(jitted), _torch_resize(table[None], (13, 13), "bicubic"), atol=1e-5, rtol=0)


def test_bad_arguments_are_named():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match="unknown resize method 'area'"):
    resize_images(x, (2, 2), "area")
  with pytest.raises(ValueError, match="positive ints, got 0"):
    resize_images(x, (0, 2), "bilinear")
  with pytest.raises(ValueError, match="positive ints, got -3"):
    resize_matrix(-3, 2, "bicubic")
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    resize_images(jnp.zeros((4, 4, 3)), (2, 2), "bilinear")
  with pytest.raises(ValueError, match=r"\[h, w, C\]"):
    resize_grid(x, (2, 2), "bilinear")
  with pytest.raises(ValueError, match=r"\(height, width\)"):
    resize_images(x, (2, 2, 2), "bilinear")
  with pytest.raises(ValueError, match=r"\(height, width\)"):
    resize_images(x, 2, "bilinear")
