"""Keyframe selection at 2 FPS and the video -> keyframe codes pipeline."""

import jax
import numpy as np
import pytest

from planx_jax import tatok
from planx_jax.data.keyframes import frames_to_unit, keyframe_indices, select_keyframes


def test_121_frames_at_24_fps_give_11_keyframes():
  np.testing.assert_array_equal(keyframe_indices(121, 24), np.arange(0, 121, 12))


@pytest.mark.parametrize("num_frames, fps, expected", [
    (11, 24, [0]),  # 0.46 s: one keyframe
    (1, 24, [0]),
    (12, 24, [0]),
    (13, 24, [0, 12]),
    (31, 30, [0, 15, 30]),
    (60, 29.97, [0, 15, 30, 45]),  # 14.985 -> 15, 29.97 -> 30, 44.955 -> 45
    (4, 1, [0, 1, 1, 2, 2, 3, 3]),  # fps < 2: frames repeat, time stays aligned
])
def test_keyframe_indices(num_frames, fps, expected):
  np.testing.assert_array_equal(keyframe_indices(num_frames, fps), expected)


@pytest.mark.parametrize("fps", [0, -24, float("nan"), float("inf")])
def test_bad_fps_is_an_error(fps):
  with pytest.raises(ValueError, match="fps must be a positive number"):
    keyframe_indices(121, fps)


@pytest.mark.parametrize("frames, message", [
    (np.zeros((4, 8, 8), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((4, 8, 8, 1), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((0, 8, 8, 3), np.uint8), "at least one frame"),
    (np.full((4, 8, 8, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((4, 8, 8, 3), np.int32), "uint8"),
])
def test_bad_videos_are_errors(frames, message):
  with pytest.raises(ValueError, match=message):
    select_keyframes(frames, 24)


def test_uint8_and_float_frames_agree():
  frames = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
  np.testing.assert_array_equal(frames_to_unit(frames), frames_to_unit(frames.astype(np.float32) / 255.0))


def test_video_keyframe_codes_encode_the_2fps_frames():
  config = tatok.TATokConfig.tiny(codebook_size=256)
  params = tatok.init_params(config, jax.random.key(0, impl="rbg"))  # rbg: threefry compiles slowly on CPU
  video = np.random.default_rng(1).integers(0, 256, size=(25, 54, 54, 3), dtype=np.uint8)  # 1.04 s at 24 fps
  codes = tatok.video_keyframe_codes(config, params, video, fps=24, scale=2, batch_size=2)
  assert codes.shape == (3, 81) and codes.dtype == np.int32  # frames 0, 12, 24; last batch padded
  expected = tatok.encode(config, params, video[[0, 12, 24]].astype(np.float32) / 255.0, 2)
  np.testing.assert_array_equal(codes, np.asarray(expected))
  assert codes.min() >= 0 and codes.max() < 256
