"""Tests for the training-record schema, the synthetic source and the TFDS ArrayRecord builder and reader.

Manifests of synthetic clips are written as .npy files under tmp_path; no TensorFlow, no downloads.
"""

import json
import os

import numpy as np
import pytest

from planx_jax.data import records as rec_lib
from planx_jax.data import tfds_builder
from planx_jax.data.synthetic import SyntheticSource

CODEBOOK = 64
SHAPES = rec_lib.RecordShapes.tiny()  # K=3, latents [4, 8, 8, 8], text [8, 32]


@pytest.fixture(scope="module")
def source():
  return SyntheticSource(SHAPES, CODEBOOK, num_records=6, seed=0)


def _assert_same_record(got, want):
  assert list(got) == list(rec_lib.FIELDS)
  for name in rec_lib.FIELDS:
    assert type(got[name]) is type(want[name]), name
    if isinstance(want[name], np.ndarray):
      assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    else:
      assert got[name] == want[name], name


def _write_clips(root, source, int64_codes_for=(), omit_t2v_codes_s0=True):
  """Writes each synthetic record's arrays as .npy under root/clips/<key>/ and returns the manifest lines."""
  lines = []
  for i in range(len(source)):
    record, key = source[i], f"clip{i:03d}"
    folder = root / "clips" / key
    folder.mkdir(parents=True)
    line = {"key": key, "has_first_frame": bool(record["has_first_frame"])}
    line.update({name: record[name] for name in rec_lib.TEXT_FIELDS})
    for name in tfds_builder.MANIFEST_ARRAY_FIELDS:
      if name == "codes_s0" and omit_t2v_codes_s0 and not record["has_first_frame"]:
        continue
      value = record[name].astype(np.int64) if (i in int64_codes_for and name in rec_lib.CODE_FIELDS) else record[name]
      np.save(folder / f"{name}.npy", value)
      line[name] = f"clips/{key}/{name}.npy"
    lines.append(line)
  return lines


def _write_manifest(path, lines):
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return path


def test_record_shapes_validate_and_round_trip():
  assert rec_lib.RecordShapes.from_dict(SHAPES.to_dict()) == SHAPES
  assert SHAPES.array_specs()["codes_s2"] == ((3, 81), np.dtype(np.int32))
  with pytest.raises(ValueError, match="num_keyframes K must be an int >= 2"):
    rec_lib.RecordShapes.tiny(num_keyframes=1)
  with pytest.raises(ValueError, match=r"latent_shape \(F, H, W, C\) must be 4 positive ints"):
    rec_lib.RecordShapes.tiny(latent_shape=(4, 8, 8))
  with pytest.raises(ValueError, match="unknown RecordShapes config key 'latents'"):
    rec_lib.RecordShapes.from_dict({"latents": (1, 1, 1, 1)})


def test_check_record_casts_and_reports_the_offending_field(source):
  record = dict(source[0])
  record["codes_s2"] = record["codes_s2"].astype(np.int64)
  record["latents"] = record["latents"].astype(np.float64)
  checked = rec_lib.check_record(record, SHAPES, CODEBOOK, index=5)
  assert checked["codes_s2"].dtype == np.int32 and checked["latents"].dtype == np.float32
  np.testing.assert_array_equal(checked["codes_s2"], source[0]["codes_s2"])

  def bad(message, **changes):
    with pytest.raises(ValueError, match=message):
      rec_lib.check_record({**source[0], **changes}, SHAPES, CODEBOOK, index=5)

  bad(r"record 5: latents must have shape \[4, 8, 8, 8\], got \[4, 8, 8, 7\]",
      latents=np.zeros((4, 8, 8, 7), np.float32))
  bad(r"record 5: text_emb must be a float array \(stored as float32\), got dtype int32",
      text_emb=np.zeros((8, 32), np.int32))
  codes = source[0]["codes_s2"].copy()
  codes[1, 7] = CODEBOOK
  bad(r"record 5: codes_s2\[1, 7\] = 64 is outside the codebook \[0, 64\)", codes_s2=codes)
  bad(r"codes_s0\[0\] = -1 is outside", codes_s0=np.full((729,), -1, np.int32))
  bad("codes_s0 must hold integer codes, got dtype float32", codes_s0=np.zeros((729,), np.float32))
  latents = source[0]["latents"].copy()
  latents[0, 1, 2, 3] = np.nan
  bad(r"latents\[0, 1, 2, 3\] is not finite", latents=latents)
  bad("has_first_frame is False but codes_s0 is not all zeros", has_first_frame=False)
  bad("has_first_frame must be a bool, got 1", has_first_frame=1)
  bad("video_prompt must be a non-empty string", video_prompt="  ")
  bad(r"unknown fields \['caption'\]", caption="x")
  with pytest.raises(ValueError, match=r"missing fields \['latents'\]"):
    rec_lib.check_record({k: v for k, v in source[0].items() if k != "latents"}, SHAPES, CODEBOOK)


def test_synthetic_source_is_deterministic_and_valid(source):
  again = SyntheticSource(SHAPES, CODEBOOK, num_records=6, seed=0)
  other = SyntheticSource(SHAPES, CODEBOOK, num_records=6, seed=1)
  for i in range(len(source)):
    record = rec_lib.check_record(source[i], SHAPES, CODEBOOK, index=i)
    _assert_same_record(record, source[i])
    _assert_same_record(again[i], source[i])
    assert bool(record["has_first_frame"]) == (i % 4 != 3)
    if record["has_first_frame"]:
      # Keyframe 0 at scale 0 is the scale-2 grid upsampled 3x: the two code maps agree.
      first = record["codes_s0"].reshape(27, 27)[1::3, 1::3].reshape(81)
      np.testing.assert_array_equal(first, record["codes_s2"][0])
    else:
      assert not record["codes_s0"].any()
  assert any(not np.array_equal(source[i]["latents"], other[i]["latents"]) for i in range(len(source)))
  with pytest.raises(IndexError, match=r"record index 6 out of range \[0, 6\)"):
    source[6]
  with pytest.raises(ValueError, match="num_records must be a positive int"):
    SyntheticSource(SHAPES, CODEBOOK, num_records=0)


def test_manifest_build_round_trips_every_field(tmp_path, source):
  root = tmp_path / "data"
  lines = _write_clips(root, source, int64_codes_for=(1,))
  assert "codes_s0" not in lines[3]  # a T2V clip may leave out its zero first-frame codes
  manifest = _write_manifest(tmp_path / "manifest.jsonl", lines)  # outside the data root, which is named
  out = tfds_builder.build_dataset(tmp_path / "ds", manifest=manifest, data_root=root, shapes=SHAPES,
                                   codebook_size=CODEBOOK)
  assert out == tmp_path / "ds"
  assert sorted(os.listdir(tmp_path)) == ["data", "ds", "manifest.jsonl"]  # no temp dir left behind
  loaded = tfds_builder.load_dataset(out)
  assert len(loaded) == len(source) and loaded.shapes == SHAPES and loaded.codebook_size == CODEBOOK
  for i in range(len(source)):
    _assert_same_record(loaded[i], source[i])
  for got, i in zip(loaded.__getitems__([4, 0]), (4, 0)):
    _assert_same_record(got, source[i])


def test_build_from_records_round_trips_and_refuses_to_overwrite(tmp_path, source):
  out = tfds_builder.build_dataset(tmp_path / "ds", records=source, shapes=SHAPES, codebook_size=CODEBOOK,
                                   split="validation")
  loaded = tfds_builder.load_dataset(out, split="validation")
  for i in range(len(source)):
    _assert_same_record(loaded[i], source[i])
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    tfds_builder.build_dataset(out, records=source, shapes=SHAPES, codebook_size=CODEBOOK)
  with pytest.raises(ValueError, match=r"has no split 'train'; it has \['validation'\]"):
    tfds_builder.load_dataset(out)
  with pytest.raises(FileNotFoundError, match="not a built Plan-X records dataset"):
    tfds_builder.load_dataset(tmp_path / "missing")
  with pytest.raises(ValueError, match="record 2: latents must have shape"):
    broken = [dict(source[i]) for i in range(3)]
    broken[2]["latents"] = np.zeros((1,), np.float32)
    tfds_builder.build_dataset(tmp_path / "ds2", records=broken, shapes=SHAPES, codebook_size=CODEBOOK)
  assert not (tmp_path / "ds2").exists()


def _edit_out_of_range(root, lines):
  codes = np.load(root / lines[2]["codes_s2"])
  codes[0, 0] = CODEBOOK + 3
  np.save(root / lines[2]["codes_s2"], codes)


def _edit_wrong_shape(root, lines):
  np.save(root / lines[1]["latents"], np.zeros((4, 8, 8, 9), np.float32))


def _edit_missing_file(root, lines):
  (root / lines[4]["text_emb"]).unlink()


def _edit_truncated_file(root, lines):
  path = root / lines[5]["latents"]
  path.write_bytes(path.read_bytes()[:300])


def _edit_symlink_out(root, lines):
  target = root.parent / "outside.npy"
  np.save(target, np.load(root / lines[0]["latents"]))
  os.symlink(target, root / "link.npy")
  lines[0]["latents"] = "link.npy"


def _escape_with_dots(root, lines):
  np.save(root.parent / "stolen.npy", np.load(root / lines[0]["latents"]))
  lines[0]["latents"] = "clips/../../stolen.npy"


@pytest.mark.parametrize("edit, error, message", [
    (_edit_out_of_range, ValueError,
     r"manifest.jsonl:3 \(key 'clip002'\): codes_s2\[0, 0\] = 67 is outside the codebook"),
    (_edit_wrong_shape, ValueError, r"key 'clip001'\): latents must have shape \[4, 8, 8, 8\], got \[4, 8, 8, 9\]"),
    (_edit_missing_file, FileNotFoundError, r"manifest.jsonl:5: text_emb file .*clip004/text_emb.npy' does not exist"),
    (_edit_truncated_file, ValueError, r"manifest.jsonl:6 \(key 'clip005'\): latents file .* is not a readable .npy"),
    (_escape_with_dots, ValueError, r"latents path 'clips/../../stolen.npy' resolves to .* outside the data root"),
    (_edit_symlink_out, ValueError, r"latents path 'link.npy' resolves to .*outside.npy', outside the data root"),
    (lambda root, lines: lines[2].update(latents=str(root / lines[2]["latents"])), ValueError,
     r"manifest.jsonl:3: latents path '/.*' is absolute; paths must be relative to the data root"),
    (lambda root, lines: lines[3].update(key="clip000"), ValueError,
     r"manifest.jsonl:4: duplicate key 'clip000' \(first on line 1\)"),
    (lambda root, lines: lines[0].update(caption="x"), ValueError, r"manifest.jsonl:1: unknown keys \['caption'\]"),
    (lambda root, lines: lines[0].pop("codes_s0"), ValueError, r"manifest.jsonl:1: missing keys \['codes_s0'\]"),
    (lambda root, lines: lines[1].update(has_first_frame="yes"), ValueError, "has_first_frame must be true or false"),
])
def test_malformed_manifest_is_a_clear_error_and_writes_nothing(tmp_path, source, edit, error, message):
  root = tmp_path / "data"
  lines = _write_clips(root, source)
  edit(root, lines)
  manifest = _write_manifest(root / "manifest.jsonl", lines)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(error, match=message):
    tfds_builder.build_dataset(tmp_path / "ds", manifest=manifest, shapes=SHAPES, codebook_size=CODEBOOK)
  assert sorted(os.listdir(tmp_path)) == before and not (tmp_path / "ds").exists()


def test_manifest_lines_must_be_single_json_objects(tmp_path, source):
  root = tmp_path / "data"
  lines = _write_clips(root, source)
  text = json.dumps(lines[0])
  duplicated = text[:-1] + ', "key": "again"}'
  for body, message in (
      (duplicated + "\n", r"manifest.jsonl:1: not a valid JSON object line \(duplicate key 'key'\)"),
      (text + "\n{oops\n", r"manifest.jsonl:2: not a valid JSON object line"),
      ("[1, 2]\n", "manifest.jsonl:1: a manifest line must be a JSON object, got list"),
      ("\n\n", "has no records"),
  ):
    (root / "manifest.jsonl").write_text(body)
    with pytest.raises(ValueError, match=message):
      tfds_builder.build_dataset(tmp_path / "ds", manifest=root / "manifest.jsonl", shapes=SHAPES,
                                 codebook_size=CODEBOOK)
    assert not (tmp_path / "ds").exists()
  with pytest.raises(FileNotFoundError, match="manifest .*nowhere.jsonl' does not exist"):
    tfds_builder.build_dataset(tmp_path / "ds", manifest=root / "nowhere.jsonl", shapes=SHAPES,
                               codebook_size=CODEBOOK)
  with pytest.raises(ValueError, match="exactly one of manifest= or records="):
    tfds_builder.build_dataset(tmp_path / "ds", shapes=SHAPES, codebook_size=CODEBOOK)
