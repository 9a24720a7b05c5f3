"""Tests for the pixel space-to-depth codec: exact round trips, Wan's causal frame layout, normalisation, errors.

Expected latents are read off the pixels with plain NumPy strides, not with the codec's reshapes.
"""

import numpy as np
import pytest

from planx_jax.data.pixel_codec import PixelCodec, decode, encode, fit


def _video(shape=(2, 9, 16, 24, 3), seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def _channels(codec: PixelCodec, ti: int, r: int, c: int) -> slice:
  """The rgb channels of (time ti, row r, column c) inside a latent cell: order (time, row, column, rgb)."""
  start = ((ti * codec.spatial + r) * codec.spatial + c) * 3
  return slice(start, start + 3)


@pytest.mark.parametrize("spatial, temporal", [(4, 4), (2, 1)])
def test_round_trip_is_exact_and_shapes_match(spatial, temporal):
  codec = PixelCodec(spatial=spatial, temporal=temporal)
  video = _video()
  latents = encode(codec, video)
  assert latents.dtype == np.float32
  assert latents.shape == (2, *codec.latent_shape(9, 16, 24))
  assert latents.shape == (2, 1 + 8 // temporal, 16 // spatial, 24 // spatial, 3 * temporal * spatial**2)
  back = np.asarray(decode(codec, latents))
  assert back.shape == video.shape
  assert np.max(np.abs(back - video)) < 1e-6


def test_round_trip_with_fitted_normalisation():
  video = _video(seed=1)
  codec = fit(PixelCodec(), video)
  back = np.asarray(decode(codec, encode(codec, video)))
  assert np.max(np.abs(back - video)) < 1e-5


def test_latent_frames_follow_wans_causal_layout():
  codec = PixelCodec(spatial=4, temporal=4)
  video = _video(seed=2)
  latents = np.asarray(encode(codec, video))
  s, st = codec.spatial, codec.temporal
  for ti in range(st):
    for r in range(s):
      for c in range(s):
        ch = _channels(codec, ti, r, c)
        # Latent frame 0 repeats video frame 0 in each of its `temporal` slots.
        np.testing.assert_array_equal(latents[:, 0, :, :, ch], video[:, 0, r::s, c::s, :])
        # Latent frame 1 holds video frames 1..4 in order, latent frame 2 frames 5..8.
        np.testing.assert_array_equal(latents[:, 1, :, :, ch], video[:, 1 + ti, r::s, c::s, :])
        np.testing.assert_array_equal(latents[:, 2, :, :, ch], video[:, 5 + ti, r::s, c::s, :])


def test_latent_frame_zero_depends_only_on_video_frame_zero():
  codec = PixelCodec(spatial=4, temporal=4)
  video = _video(seed=3)
  changed = video.copy()
  changed[:, 1:] = _video(seed=4)[:, 1:]
  a, b = np.asarray(encode(codec, video)), np.asarray(encode(codec, changed))
  np.testing.assert_array_equal(a[:, 0], b[:, 0])
  assert np.max(np.abs(a[:, 1:] - b[:, 1:])) > 0.1
  changed_first = video.copy()
  changed_first[:, 0] = -video[:, 0]
  c = np.asarray(encode(codec, changed_first))
  np.testing.assert_array_equal(a[:, 1:], c[:, 1:])
  assert np.max(np.abs(a[:, 0] - c[:, 0])) > 0.1


def test_fit_normalises_latents():
  rng = np.random.default_rng(5)
  video = (0.3 + 0.2 * rng.standard_normal((2, 9, 16, 24, 3))).clip(-1, 1).astype(np.float32)
  codec = fit(PixelCodec(spatial=4, temporal=4), video)
  # Raw latents are the pixels with frame 0 counted `temporal` times.
  raw = np.concatenate([np.repeat(video[:, :1], 4, axis=1), video[:, 1:]], axis=1).astype(np.float64)
  assert codec.mean == pytest.approx(raw.mean(), abs=1e-5)
  assert codec.std == pytest.approx(raw.std(), rel=1e-4)
  latents = np.asarray(encode(codec, video), np.float64)
  assert abs(latents.mean()) < 1e-4
  assert abs(latents.std() - 1.0) < 1e-4
  assert (codec.spatial, codec.temporal) == (4, 4)


def test_decode_clips_to_unit_range():
  codec = PixelCodec(spatial=2, temporal=1)
  raw = 3.0 * np.random.default_rng(6).standard_normal((1, 3, 4, 4, codec.latent_channels)).astype(np.float32)
  video = np.asarray(decode(codec, raw))
  assert video.min() >= -1.0 and video.max() <= 1.0
  assert video.min() == -1.0 and video.max() == 1.0
  np.testing.assert_array_equal(video[:, 1, 0::2, 1::2, :], np.clip(raw[:, 1, :, :, _channels(codec, 0, 0, 1)], -1, 1))


@pytest.mark.parametrize("shape, match", [
    ((1, 8, 16, 24, 3), "8x16x24"),  # frames not 1 + 4k
    ((1, 9, 18, 24, 3), "9x18x24"),  # height not a multiple of 4
    ((1, 9, 16, 26, 3), "9x16x26"),  # width not a multiple of 4
    ((1, 9, 16, 24, 4), r"\[B, T, H, W, 3\]"),  # four channels
    ((9, 16, 24, 3), r"\[B, T, H, W, 3\]"),  # no batch axis
])
def test_encode_rejects_bad_videos(shape, match):
  with pytest.raises(ValueError, match=match):
    encode(PixelCodec(spatial=4, temporal=4), np.zeros(shape, np.float32))


def test_latent_shape_and_decode_reject_bad_inputs():
  codec = PixelCodec(spatial=4, temporal=4)
  with pytest.raises(ValueError, match="0x16x24"):
    codec.latent_shape(0, 16, 24)
  with pytest.raises(ValueError, match="latents must be"):
    decode(codec, np.zeros((1, 3, 4, 6, 47), np.float32))
  with pytest.raises(ValueError, match="latents must be"):
    decode(codec, np.zeros((3, 4, 6, 48), np.float32))


@pytest.mark.parametrize("kwargs, match", [
    ({"std": 0.0}, "positive std"),
    ({"std": -1.0}, "positive std"),
    ({"std": float("nan")}, "positive std"),
    ({"mean": float("inf")}, "finite mean"),
    ({"spatial": 0}, "spatial"),
    ({"temporal": -1}, "temporal"),
    ({"spatial": 2.0}, "spatial"),
])
def test_codec_rejects_bad_fields(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PixelCodec(**kwargs)


def _low_rank_video(rng, rank):
  """Videos whose 4x4 x 4-frame blocks lie in a `rank`-dim affine subspace; every block repeats one 4x4 image over
  its 4 frames, so latent frame 0 (video frame 0 repeated) stays in the subspace."""
  codec = PixelCodec(spatial=4, temporal=4)
  spatial = rng.normal(size=(rank, 1, 4 * 4 * 3))
  directions = np.broadcast_to(spatial, (rank, 4, 48)).reshape(rank, codec.block_size)  # (time, row, col, rgb)
  latents = rng.normal(size=(2, 3, 4, 5, rank)) @ directions * 0.05 + 0.05
  video = decode(codec, latents.astype(np.float32))  # clipped values stay inside [-1, 1] at this scale
  return np.asarray(video), codec


def test_pca_codec_round_trips_data_of_its_rank():
  rng = np.random.default_rng(3)
  video, codec = _low_rank_video(rng, 6)
  assert np.abs(video).max() < 1.0
  fitted = fit(codec, video, channels=6)
  z = encode(fitted, video)
  assert z.shape == (2, 3, 4, 5, 6) and fitted.latent_channels == 6
  np.testing.assert_allclose(np.asarray(decode(fitted, z)), video, atol=1e-5)
  flat = np.asarray(z).reshape(-1, 6)
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)  # whitened: zero mean, unit std per component
  np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-3)
  lossy = fit(codec, video, channels=3)  # fewer components than the data's rank: not exact
  assert np.abs(np.asarray(decode(lossy, encode(lossy, video))) - video).max() > 1e-2


def test_pca_codec_rejects_bad_channels_and_basis():
  rng = np.random.default_rng(4)
  video, codec = _low_rank_video(rng, 4)
  for channels in (0, codec.block_size + 1, 2.5):
    with pytest.raises(ValueError, match="channels"):
      fit(codec, video, channels=channels)
  with pytest.raises(ValueError, match="go together"):
    PixelCodec(basis=np.eye(192, 4, dtype=np.float32))
  with pytest.raises(ValueError, match="basis must be"):
    PixelCodec(basis=np.eye(10, 4), center=np.zeros(10), scale=np.ones(4))


def test_delta_codec_is_zero_on_a_static_scene_and_round_trips():
  rng = np.random.default_rng(5)
  frame = rng.uniform(-1, 1, size=(2, 1, 16, 16, 3)).astype(np.float32)
  static = np.repeat(frame, 9, axis=1)
  codec = PixelCodec(delta=True)
  z = np.asarray(encode(codec, static))
  np.testing.assert_allclose(z[:, 1:], 0.0, atol=1e-6)  # nothing changes after the first frame
  np.testing.assert_allclose(z[:, 0], np.asarray(encode(PixelCodec(), static))[:, 0], atol=1e-6)
  moving = rng.uniform(-1, 1, size=(2, 9, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(decode(codec, encode(codec, moving))), moving, atol=1e-5)
  plain = np.asarray(encode(PixelCodec(), moving))
  np.testing.assert_allclose(np.asarray(encode(codec, moving))[:, 2], plain[:, 2] - plain[:, 0], atol=1e-6)
  fitted = fit(codec, moving, channels=8)
  assert fitted.delta and np.abs(np.asarray(encode(fitted, static))[:, 1:]).max() < 1e-5
