"""`planx generate`: the embedded default writes a playable MP4 and a contact sheet; saved components (with a
first frame and a keyframe plan through TA-Tok) load and run; bad requests fail before any compute."""

import json
import re

import jax
import numpy as np
import pytest
from PIL import Image

from planx_jax import cli, dit, t5, tatok, vae, video_io
from planx_jax.commands import generate


def run_cli(*args) -> int:
  return cli.main(["generate", *args])


def test_embedded_default_writes_playable_video_and_contact_sheet(tmp_path):
  out = tmp_path / "out"
  assert run_cli("--frames", "5", "--height", "32", "--width", "64", "--steps", "2", "--fps", "8",
                 "--out", str(out)) == 0
  frames, fps = video_io.read_mp4(out / "video.mp4")
  assert frames.shape == (5, 32, 64, 3) and fps == 8.0
  assert frames.std() > 1.0  # random weights give a non-constant picture
  sheet = np.asarray(Image.open(out / "contact_sheet.png"))
  assert sheet.shape == (32, 5 * 64 + 4 * 2, 3)
  meta = json.loads((out / "generation.json").read_text())
  assert meta["embedded_default"] and meta["steps"] == 2
  assert np.load(out / "latents.npy").shape == (1, 2, 2, 4, vae.VAEConfig.tiny().z_dim)


@pytest.fixture(scope="module")
def saved_components(tmp_path_factory):
  """The embedded default's components saved as planx checkpoints, the DiT with a semantic branch, plus TA-Tok."""
  root = tmp_path_factory.mktemp("components")
  (t5_config, t5_params, tokenizer), (dit_config, dit_params), (vae_config, vae_params) = generate._embedded_default()
  tatok_config = tatok.TATokConfig.tiny(codebook_size=64)
  tatok_params = tatok.init_params(tatok_config, jax.random.key(1, impl="rbg"))
  dit.save_checkpoint(root / "dit_plain", dit_config, dit_params)
  dit_config, dit_params = dit.add_semantic_branch(dit_config, dit_params, tatok_config.code_dim)
  t5.save_checkpoint(root / "t5", t5_config, t5_params, tokenizer=tokenizer)
  dit.save_checkpoint(root / "dit", dit_config, dit_params)
  vae.save_checkpoint(root / "vae", vae_config, vae_params)
  tatok.save_checkpoint(root / "tatok", tatok_config, tatok_params)
  np.save(root / "plan.npy", np.random.default_rng(0).integers(0, 64, size=(2, 81)))
  np.save(root / "first.npy", np.random.default_rng(1).uniform(0, 1, size=(32, 32, 3)).astype(np.float32))
  return root


def test_saved_components_with_first_frame_and_plan(saved_components, tmp_path):
  root = saved_components
  args = ["--dit", str(root / "dit"), "--vae", str(root / "vae"), "--text-encoder", str(root / "t5"),
          "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--guidance", "1",
          "--fps", "8", "--first-frame", str(root / "first.npy"),
          "--plan", str(root / "plan.npy"), "--tatok", str(root / "tatok")]
  assert run_cli(*args, "--out", str(tmp_path / "a")) == 0
  frames, _ = video_io.read_mp4(tmp_path / "a" / "video.mp4")
  assert frames.shape == (5, 32, 32, 3)
  latents = np.load(tmp_path / "a" / "latents.npy")
  config, params, _ = vae.load_checkpoint(root / "vae")
  first = vae.encode(config, params, np.load(root / "first.npy")[None, None] * 2 - 1)
  np.testing.assert_allclose(latents[:, :1], np.asarray(first), atol=1e-6)  # TI2V: frame 0 stays the encoded image
  plan = np.load(root / "plan.npy")
  np.save(root / "plan2.npy", (plan + 1) % 64)
  assert run_cli(*args[:-4], "--plan", str(root / "plan2.npy"), "--tatok", str(root / "tatok"),
                 "--out", str(tmp_path / "b")) == 0
  assert not np.allclose(np.load(tmp_path / "b" / "latents.npy"), latents)  # the plan reaches the DiT


@pytest.mark.parametrize("args, message", [
    (["--height", "48"], "multiple of 32"),
    (["--width", "0"], "multiple of 32"),
    (["--frames", "6"], "4k \\+ 1"),
    (["--frames", "0"], "4k \\+ 1"),
    (["--dit", "/nonexistent/dit"], "does not exist"),
    (["--first-frame", "/nonexistent/first.png"], "does not exist"),
    (["--plan", "/nonexistent/plan.npy"], "does not exist"),
    (["--steps", "0"], "steps"),
])
def test_bad_requests_fail_before_any_compute(args, message, tmp_path, monkeypatch, capsys):
  def no_loading(_):
    raise AssertionError("models were loaded before the request was checked")

  monkeypatch.setattr(generate, "_load", no_loading)
  assert run_cli(*args, "--out", str(tmp_path / "o")) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "o").exists()


def test_partial_component_set_is_an_error(saved_components, tmp_path, capsys):
  assert run_cli("--dit", str(saved_components / "dit"), "--out", str(tmp_path / "o")) == 2
  assert "--text-encoder" in capsys.readouterr().err


def test_plan_without_semantic_branch_is_an_error(saved_components, tmp_path, capsys):
  root = saved_components
  assert run_cli("--dit", str(root / "dit_plain"), "--vae", str(root / "vae"), "--text-encoder",
                 str(root / "t5"), "--frames", "1", "--height", "32", "--width", "32", "--steps", "1",
                 "--plan", str(root / "plan.npy"), "--tatok", str(root / "tatok"), "--out", str(tmp_path / "o")) == 2
  assert "semantic branch" in capsys.readouterr().err
