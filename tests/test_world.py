"""Tests of the synthetic world: deterministic sampling, held-out splits, trajectories, renders and captions."""

import json

import numpy as np
import pytest

from planx_jax.world import scenes as world
from planx_jax.world.scenes import Episode, Step, WorldObject

NUM_SAMPLED = 200


@pytest.fixture(scope="module")
def sampled():
  return {split: [world.sample_episode(3, i, split) for i in range(NUM_SAMPLED)] for split in world.SPLITS}


def two_object_episode(steps) -> Episode:
  return Episode("gray", (WorldObject("red", "circle", (32.0, 20.0)), WorldObject("blue", "square", (32.0, 48.0))),
                 tuple(steps))


def test_sampling_is_deterministic_and_depends_on_every_key():
  for split in world.SPLITS:
    for i in range(5):
      assert world.sample_episode(7, i, split) == world.sample_episode(7, i, split)
  base = [world.sample_episode(7, i, "train") for i in range(10)]
  assert base != [world.sample_episode(8, i, "train") for i in range(10)]
  assert base != [world.sample_episode(7, i, "heldout") for i in range(10)]
  assert len({repr(e) for e in base}) == len(base)


def test_world_source_is_random_access_to_sample_episode():
  source = world.WorldSource(5, "heldout", 4)
  assert len(source) == 4
  assert [source[i] for i in range(4)] == [world.sample_episode(5, i, "heldout") for i in range(4)]
  assert source[-1] == source[3]
  with pytest.raises(IndexError, match="out of range"):
    source[4]
  with pytest.raises(ValueError, match="split"):
    world.WorldSource(5, "test", 4)
  with pytest.raises(ValueError, match="num_episodes"):
    world.WorldSource(5, "train", 0)


def test_held_out_pairs_cover_every_colour_with_known_actions():
  colors = [c for c, _ in world.HELD_OUT]
  assert sorted(colors) == sorted(world.PALETTE)
  assert {a for _, a in world.HELD_OUT} == set(world.ACTIONS)


def test_splits_respect_the_held_out_pairs(sampled):
  for split, episodes in sampled.items():
    for e in episodes:
      pairs = {(e.objects[s.obj].color, s.action) for s in e.steps}
      if split == "train":
        assert not pairs & world.HELD_OUT, e
      else:
        assert pairs & world.HELD_OUT, e
  train_pairs = {(e.objects[s.obj].color, s.action) for e in sampled["train"] for s in e.steps}
  assert len(train_pairs) == len(world.PALETTE) * len(world.ACTIONS) - len(world.HELD_OUT)


def test_sampled_scenes_have_the_promised_sizes(sampled):
  for episodes in sampled.values():
    assert {len(e.objects) for e in episodes} == {2, 3}
    assert {len(e.steps) for e in episodes} == {1, 2}
    assert {s.action for e in episodes for s in e.steps} == set(world.ACTIONS)
    assert {o.shape for e in episodes for o in e.objects} == set(world.SHAPES)
    assert set(world.BACKGROUNDS) == {e.background for e in episodes}
    for e in episodes:
      assert len({o.color for o in e.objects}) == len(e.objects)


def test_sampled_trajectories_stay_inside_and_apart(sampled):
  for episodes in sampled.values():
    for e in episodes:
      centres = world.trajectories(e)  # [T, n, 2]
      assert centres.shape == (world.NUM_FRAMES, len(e.objects), 2)
      assert centres.min() >= world.EXTENT + world.MARGIN
      assert centres.max() <= world.FRAME_SIZE - 1 - world.EXTENT - world.MARGIN
      distance = np.linalg.norm(centres[:, :, None] - centres[:, None, :], axis=-1)  # [T, n, n]
      off_diagonal = ~np.eye(len(e.objects), dtype=bool)
      assert distance[:, off_diagonal].min() >= 18.0


def test_trajectories_follow_the_steps():
  e = two_object_episode([Step(0, "moves right"), Step(1, "jumps")])
  centres = world.trajectories(e)
  np.testing.assert_allclose(centres[:, 1, 1], 48.0)
  np.testing.assert_allclose(centres[:9, 1, 0], 32.0)
  np.testing.assert_allclose(centres[:, 0, 0], 32.0)
  np.testing.assert_allclose(centres[:9, 0, 1], 20.0 + 2.0 * np.arange(9))  # 16 px over 8 frames
  np.testing.assert_allclose(centres[8:, 0, 1], 36.0)
  np.testing.assert_allclose(centres[[8, 10, 12, 14, 16], 1, 0], [32.0, 20.0, 16.0, 20.0, 32.0])  # up 16, back
  down = world.trajectories(two_object_episode([Step(1, "moves up"), Step(1, "moves left"), Step(0, "moves down")]))
  np.testing.assert_allclose(down[-1], [[48.0, 20.0], [16.0, 32.0]])


def test_step_windows_split_the_frames_evenly():
  assert world.step_windows(1, 17) == [(0, 16)]
  assert world.step_windows(2, 17) == [(0, 8), (8, 16)]
  for num_steps in (1, 2, 3):
    for num_frames in range(num_steps + 1, 30):
      windows = world.step_windows(num_steps, num_frames)
      assert windows[0][0] == 0 and windows[-1][1] == num_frames - 1
      assert all(windows[s][1] == windows[s + 1][0] for s in range(num_steps - 1))
      lengths = [b - a for a, b in windows]
      assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
  with pytest.raises(ValueError, match="cannot split"):
    world.step_windows(3, 3)
  with pytest.raises(ValueError, match="cannot split"):
    world.step_windows(0, 17)


def test_render_draws_each_object_at_its_centre_without_overlap(sampled):
  for e in sampled["heldout"][:20]:
    frames = world.render(e)
    assert frames.shape == (world.NUM_FRAMES, world.FRAME_SIZE, world.FRAME_SIZE, 3) and frames.dtype == np.uint8
    assert (frames[:, 0, 0] == world.BACKGROUNDS[e.background]).all()
    centres = world.trajectories(e)
    for t in range(e.num_frames):
      for i, obj in enumerate(e.objects):
        r, c = np.round(centres[t, i]).astype(int)
        assert tuple(frames[t, r, c]) == world.PALETTE[obj.color]
        drawn = (frames[t] == world.PALETTE[obj.color]).all(-1)
        mask = world.shape_mask(obj.shape, centres[t, i], e.size)
        assert np.array_equal(drawn, mask)  # fully visible: nothing drawn over it
        rows, cols = np.nonzero(mask)
        assert abs(rows.mean() - centres[t, i, 0]) < 1.0 and abs(cols.mean() - centres[t, i, 1]) < 1.0


def test_shapes_are_about_fourteen_pixels_across():
  for shape in world.SHAPES:
    rows, cols = np.nonzero(world.shape_mask(shape, (32.0, 32.0), 64))
    assert 12 <= rows.max() - rows.min() + 1 <= 16 and 12 <= cols.max() - cols.min() + 1 <= 16
  with pytest.raises(ValueError, match="shape"):
    world.shape_mask("star", (32.0, 32.0), 64)


def test_palette_and_backgrounds_are_far_apart():
  colors = np.array(list(world.PALETTE.values()) + list(world.BACKGROUNDS.values()), np.float64)
  distance = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
  assert distance[~np.eye(len(colors), dtype=bool)].min() > 120  # nearest-colour segmentation stays unambiguous


def test_captions():
  e = two_object_episode([Step(0, "moves right"), Step(1, "jumps")])
  assert e.image_description == "a red circle and a blue square on a gray background"
  assert e.video_prompt == "the red circle moves right, then the blue square jumps"
  three = Episode("black", e.objects + (WorldObject("green", "triangle", (50.0, 32.0)),), (Step(2, "moves up"),))
  assert three.image_description == "a red circle, a blue square and a green triangle on a black background"
  assert three.video_prompt == "the green triangle moves up"


def test_json_round_trip(sampled):
  for e in sampled["train"][:20] + sampled["heldout"][:20]:
    assert Episode.from_json(json.loads(json.dumps(e.to_json()))) == e
  with pytest.raises(ValueError, match="not an episode"):
    Episode.from_json({"background": "gray", "objects": []})


@pytest.mark.parametrize("build, match", [
    (lambda: WorldObject("purple", "circle", (32.0, 32.0)), "colour"),
    (lambda: WorldObject("red", "star", (32.0, 32.0)), "shape"),
    (lambda: Step(0, "flies"), "action"),
    (lambda: two_object_episode([]), "steps"),
    (lambda: two_object_episode([Step(0, "jumps")] * 4), "steps"),
    (lambda: two_object_episode([Step(2, "jumps")]), "index"),
    (lambda: Episode("pink", two_object_episode([Step(0, "jumps")]).objects, (Step(0, "jumps"),)), "background"),
    (lambda: Episode("gray", (WorldObject("red", "circle", (32.0, 20.0)),) * 2, (Step(0, "jumps"),)), "unique"),
    (lambda: two_object_episode([Step(0, "moves left"), Step(0, "moves left")]), "leave"),
    (lambda: Episode("gray", (WorldObject("red", "circle", (12.0, 32.0)),), (Step(0, "jumps"),)), "leave"),
    (lambda: Episode("gray", (WorldObject("red", "circle", (32.0, 20.0)),), (Step(0, "jumps"),) * 2, 2), "frames"),
    (lambda: world.sample_episode(0, 0, "test"), "split"),
    (lambda: world.sample_episode(0, -1, "train"), "index"),
])
def test_bad_inputs_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()
