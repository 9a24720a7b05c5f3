"""TA-Tok: encode / decode against an independent torch reference written from the spec, Tar .pth import and
export round trips, the weights_only refusal, the CLI, and input errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import randomize_weights
from planx_jax import tatok
from planx_jax.plan_tokens import PlanTokens

HIDDEN, HEADS, CODE_DIM, CODEBOOK = 48, 4, 40, 128
TEACHER = "tiny-test-teacher"  # not a known preset: the head count must be passed


def build_reference(seed: int = 0):
  """The torch modules of a tiny Tar TA-Tok (transformers towers + plain Linear layers), random weights."""
  import torch
  import transformers

  torch.manual_seed(seed)
  encoder = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=3, num_attention_heads=HEADS, patch_size=2,
      image_size=54, layer_norm_eps=1e-6)).eval()
  decoder_config = transformers.Siglip2VisionConfig()
  decoder_config.update({"patch_size": 1, "num_hidden_layers": 2, "num_channels": CODE_DIM, "hidden_size": HIDDEN,
                         "intermediate_size": 64})
  decoder = transformers.Siglip2VisionModel(decoder_config).eval()
  randomize_weights(encoder, seed, 0.08)
  randomize_weights(decoder, seed + 1, 0.08)
  modules = {
      "encode_task_layer": torch.nn.Linear(HIDDEN, HIDDEN),
      "in_linear": torch.nn.Linear(HIDDEN, CODE_DIM),
      "out_linear": torch.nn.Linear(CODE_DIM, CODE_DIM),
      "embedding_proj": torch.nn.Linear(CODE_DIM, CODE_DIM),
      "decode_fc1": torch.nn.Linear(HIDDEN, HIDDEN),
      "decode_fc2": torch.nn.Linear(HIDDEN, HIDDEN),
  }
  for i, module in enumerate(modules.values()):
    randomize_weights(module, seed + 10 + i, 0.15)
  embedding = torch.randn(CODEBOOK, CODE_DIM, generator=torch.Generator().manual_seed(seed + 3))
  return encoder, decoder, modules, embedding


def tar_state(encoder, decoder, modules, embedding, extra=None):
  """Tar's state-dict names (specs/tatok_siglip.md) for the reference modules."""
  import torch

  state = {"scale_layer.shift": torch.full((1, 3, 1, 1), 0.5), "scale_layer.scale": torch.full((1, 3, 1, 1), 0.5)}
  # transformers 5 drops the `vision_model.` level inside vision models; Tar's checkpoint (transformers 4) has
  # `encoder.<tower keys>` (a vision transformer) and `decoder.vision_model.<tower keys>` (a vision model).
  state.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
  state.update({f"decoder.vision_model.{k}": v for k, v in decoder.state_dict().items()})
  for name, ref in (("encode_task_layer", "encode_task_layer.0"), ("in_linear", "bottleneck.in_linear"),
                    ("out_linear", "bottleneck.out_linear"),
                    ("embedding_proj", "bottleneck.regularizer.embedding_proj"),
                    ("decode_fc1", "decode_task_layer.0"), ("decode_fc2", "decode_task_layer.2")):
    state[f"{ref}.weight"] = modules[name].weight.detach().clone()
    state[f"{ref}.bias"] = modules[name].bias.detach().clone()
  state["bottleneck.regularizer.embedding.weight"] = embedding.clone()
  state.update(extra or {})
  return {k: v.contiguous() for k, v in state.items()}


def tar_args(codebook_size=CODEBOOK):
  return {
      "bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": CODE_DIM, "regularizer": {
          "name": "simvq", "args": {"codebook_size": codebook_size, "l2_normalized": True, "stochastic": True,
                                    "stochastic_temperature": 0.03}}}},
      "bottleneck_token_num": 729, "input_size": 54, "teacher": TEACHER, "pool_scale": 1,
  }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  import torch

  encoder, decoder, modules, embedding = build_reference()
  path = tmp_path_factory.mktemp("tar") / "ta_tok.pth"
  state = tar_state(encoder, decoder, modules, embedding, extra={"teacher.dummy.weight": torch.zeros(2, 2)})
  torch.save({"model": {"args": tar_args(), "sd": state}}, path)
  config, params = tatok.load_tar(path, encoder_heads=HEADS)
  return dict(encoder=encoder, decoder=decoder, modules=modules, embedding=embedding, path=path, state=state,
              config=config, params=params)


def torch_encode(ref, images: np.ndarray, scale: int):
  """The spec's encode path in torch ops: returns (codes, cosine gap between the best and second-best code)."""
  import torch
  import torch.nn.functional as F

  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # [B, 3, H, W]
    x = (x - 0.5) / 0.5
    if x.shape[-1] != 54:
      x = F.interpolate(x, size=(54, 54), mode="bilinear", align_corners=False, antialias=False)
    feats = ref["encoder"](pixel_values=x, output_hidden_states=True).hidden_states[-2]  # [B, 729, C]
    b, n, c = feats.shape
    grid = feats.transpose(1, 2).reshape(b, c, 27, 27)
    pooled = F.avg_pool2d(grid, kernel_size=scale + 1, stride=scale + 1).flatten(2).transpose(1, 2)
    feats = torch.tanh(ref["modules"]["encode_task_layer"](pooled))
    z = F.normalize(ref["modules"]["in_linear"](feats), dim=-1)
    codebook = F.normalize(ref["modules"]["embedding_proj"](ref["embedding"]), dim=-1)
    cos = torch.einsum("bnd,kd->bnk", z, codebook)
    top2 = torch.topk(cos, 2, dim=-1).values
    return cos.argmax(-1).numpy(), float((top2[..., 0] - top2[..., 1]).min())


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return rng.uniform(0, 1, size=(2, 60, 60, 3)).astype(np.float32)  # not 54: exercises the resize


def test_load_tar_reads_code_width_from_checkpoint(reference):
  config = reference["config"]
  assert config.code_dim == CODE_DIM != 1536
  assert config.codebook_size == CODEBOOK
  assert config.encoder.num_layers == 3 and config.encoder.num_heads == HEADS and config.encoder.patch_size == 2
  assert config.decoder.num_layers == 2 and config.decoder.num_channels == CODE_DIM
  assert config.decoder.intermediate_size == 64 and config.decoder.num_heads == 12
  assert [config.codes_per_image(s) for s in range(3)] == [729, 169, 81]
  assert "teacher" not in reference["params"]


@pytest.mark.parametrize("scale", [0, 1, 2])
def test_encode_matches_torch_reference(reference, images, scale):
  expected, gap = torch_encode(reference, images, scale)
  assert gap > 1e-5, f"random reference has a near-tie ({gap}); codes would be ill-defined"
  codes = tatok.encode(reference["config"], reference["params"], images, scale)
  assert codes.dtype == jnp.int32 and codes.shape == expected.shape == (2, (729, 169, 81)[scale])
  np.testing.assert_array_equal(np.asarray(codes), expected)


def test_encode_through_the_pallas_attention_kernel_matches_torch(reference, images):
  """Acceptance of the kernels issue: the SigLIP tower's attention in the Pallas kernel (interpret mode, CPU)."""
  expected, _ = torch_encode(reference, images, 1)
  config = reference["config"]
  config = config.replace(encoder=config.encoder.replace(attention_impl="pallas_interpret"))
  np.testing.assert_array_equal(np.asarray(tatok.encode(config, reference["params"], images, 1)), expected)


def test_decode_embeddings_and_features_match_torch(reference):
  import torch
  import torch.nn.functional as F

  codes = np.random.default_rng(1).integers(0, CODEBOOK, size=(2, 81))
  config, params = reference["config"], reference["params"]
  with torch.no_grad():
    codebook = F.normalize(reference["modules"]["embedding_proj"](reference["embedding"]), dim=-1)
    expected = F.normalize(codebook[torch.from_numpy(codes)], dim=-1)  # Tar's get_codebook_entry
    z = reference["modules"]["out_linear"](expected)
    out = reference["decoder"](pixel_values=z, pixel_attention_mask=torch.ones(2, 81, dtype=torch.int32),
                               spatial_shapes=torch.tensor([[9, 9], [9, 9]])).last_hidden_state
    features = reference["modules"]["decode_fc2"](torch.tanh(reference["modules"]["decode_fc1"](out)))
  np.testing.assert_allclose(np.asarray(tatok.decode_embeddings(config, params, codes)), expected.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(tatok.decode_features(config, params, codes)), features.numpy(), atol=1e-4)


def test_sampling_is_seeded_and_approaches_argmax(reference, images):
  config, params = reference["config"], reference["params"]
  argmax = np.asarray(tatok.encode(config, params, images, 2))
  draw = lambda seed, t=None: np.asarray(tatok.encode(config, params, images, 2, rng=jax.random.key(seed),
                                                      temperature=t))
  np.testing.assert_array_equal(draw(0), draw(0))
  assert (draw(0) != draw(1)).any()  # temperature 0.03 over 128 random codes does not always pick the best
  np.testing.assert_array_equal(draw(3, 1e-7), argmax)


def test_precomputed_codebook_gives_same_codes(reference, images):
  config, params = reference["config"], reference["params"]
  codebook = tatok.codebook_vectors(config, params)
  assert codebook.shape == (CODEBOOK, CODE_DIM)
  np.testing.assert_array_equal(np.asarray(tatok.encode(config, params, images, 1, codebook=codebook)),
                                np.asarray(tatok.encode(config, params, images, 1)))


@pytest.mark.parametrize("fmt", ["ta_tok_out.pth", "tar_dir"])
def test_export_round_trip_is_bit_exact(reference, tmp_path, fmt):
  import torch

  config, params = reference["config"], reference["params"]
  out = tatok.save_tar(config, params, tmp_path / fmt)
  if fmt.endswith(".pth"):
    saved = torch.load(out, weights_only=True)["model"]
    original = {k: v for k, v in reference["state"].items() if not k.startswith("teacher.")}
    assert sorted(saved["sd"]) == sorted(original)
    for key, value in original.items():
      assert torch.equal(saved["sd"][key], value), key
    assert saved["args"]["bottleneck"]["args"]["bottleneck_dim"] == CODE_DIM
  config2, params2 = tatok.load_tar(out, encoder_heads=HEADS)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_unknown_teacher_needs_head_count(reference):
  with pytest.raises(ValueError, match="encoder_heads"):
    tatok.load_tar(reference["path"])


def test_pickled_python_objects_are_refused(reference, tmp_path):
  import torch

  path = tmp_path / "unsafe.pth"
  torch.save({"model": {"args": PickledCallable(), "sd": reference["state"]}}, path)
  with pytest.raises(ValueError, match=r"weights_only=True"):
    tatok.load_tar(path, encoder_heads=HEADS)


class PickledCallable:
  """A non-tensor object whose unpickling would run code (os.getcwd); weights_only must refuse it."""

  def __reduce__(self):
    import os

    return (os.getcwd, ())


def test_easydict_args_load_as_plain_mappings(reference, tmp_path, monkeypatch):
  """Tar's configs are EasyDicts (a dict subclass); they load as data without importing easydict."""
  import torch

  module_dir = tmp_path / "fake_modules"
  module_dir.mkdir()
  (module_dir / "easydict.py").write_text("class EasyDict(dict):\n  pass\n")
  monkeypatch.syspath_prepend(str(module_dir))
  import easydict

  args = easydict.EasyDict(tar_args())
  path = tmp_path / "easydict.pth"
  torch.save({"model": {"args": args, "sd": reference["state"]}}, path)
  monkeypatch.delitem(sys.modules, "easydict")
  config, _ = tatok.load_tar(path, encoder_heads=HEADS)
  assert config == reference["config"]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("bottleneck.in_linear.bias"), "missing tensor 'bottleneck.in_linear.bias'"),
    (lambda s: s.update({"bottleneck.extra.weight": s["bottleneck.in_linear.bias"]}), "unexpected"),
    (lambda s: s.update({"bottleneck.out_linear.bias": s["bottleneck.out_linear.bias"][:-1]}), "shape"),
])
def test_bad_checkpoints_are_named(reference, tmp_path, mutate, message):
  import torch

  state = dict(reference["state"])
  mutate(state)
  path = tmp_path / "bad.pth"
  torch.save({"model": {"args": tar_args(), "sd": state}}, path)
  with pytest.raises(ValueError, match=message):
    tatok.load_tar(path, encoder_heads=HEADS)


def test_codebook_size_disagreeing_with_args_is_an_error(reference, tmp_path):
  import torch

  path = tmp_path / "mismatch.pth"
  torch.save({"model": {"args": tar_args(codebook_size=65536), "sd": reference["state"]}}, path)
  with pytest.raises(ValueError, match="codebook_size 65536"):
    tatok.load_tar(path, encoder_heads=HEADS)


def test_cli_converts_both_ways(reference, tmp_path):
  import torch

  ckpt, back, codebook = tmp_path / "ckpt", tmp_path / "back.pth", tmp_path / "codebook.npy"
  for cmd in (["tatok-from-tar", str(reference["path"]), str(ckpt), "--encoder-heads", str(HEADS),
               "--codebook-out", str(codebook)],
              ["tatok-to-tar", str(ckpt), str(back)]):
    result = subprocess.run([sys.executable, "-m", "planx_jax.cli", "convert", *cmd], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
  config, params, meta = tatok.load_checkpoint(ckpt)
  assert config == reference["config"] and meta["source"].endswith("ta_tok.pth")
  jax.tree.map(np.testing.assert_array_equal, params, reference["params"])
  saved = torch.load(back, weights_only=True)["model"]["sd"]
  assert torch.equal(saved["bottleneck.regularizer.embedding.weight"], reference["embedding"])
  np.testing.assert_allclose(np.load(codebook), np.asarray(tatok.codebook_vectors(config, params)), atol=0)


@pytest.mark.parametrize("images, message", [
    (np.full((1, 54, 54, 3), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((1, 54, 54, 3), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((1, 54, 54, 3), np.nan, np.float32), r"\[0, 1\]"),
    (np.zeros((54, 54, 3), np.float32), r"\[B, H, W, 3\]"),
    (np.zeros((1, 54, 54, 4), np.float32), r"\[B, H, W, 3\]"),
    (np.zeros((1, 54, 54, 3), np.uint8), "floats"),
])
def test_bad_images_are_clear_errors(reference, images, message):
  with pytest.raises(ValueError, match=message):
    tatok.encode(reference["config"], reference["params"], images, 2)


@pytest.mark.parametrize("scale", [3, -1, True, 1.0])
def test_unsupported_scale_is_an_error(reference, images, scale):
  with pytest.raises(ValueError, match="scale must be 0, 1 or 2"):
    tatok.encode(reference["config"], reference["params"], images, scale)


@pytest.mark.parametrize("codes, message", [
    (np.array([[0, CODEBOOK]]), r"\[0, 128\)"),
    (np.array([[-1, 3]]), r"\[0, 128\)"),
    (np.array([0, 1]), r"\[B, N\]"),
    (np.array([[0.0, 1.0]]), "integers"),
])
def test_bad_codes_are_clear_errors(reference, codes, message):
  with pytest.raises(ValueError, match=message):
    tatok.decode_embeddings(reference["config"], reference["params"], codes)


def test_decoder_needs_a_square_grid(reference):
  with pytest.raises(ValueError, match="square"):
    tatok.decode_features(reference["config"], reference["params"], np.zeros((1, 80), np.int32))


def test_token_id_mapping_round_trips():
  codes = np.array([[0, 1, 65535]])
  ids = tatok.codes_to_token_ids(codes)
  np.testing.assert_array_equal(ids, codes + 151670)
  np.testing.assert_array_equal(tatok.token_ids_to_codes(ids), codes)
  small = PlanTokens(text_vocab_size=300, codebook_size=512, chat_im_start=290, chat_im_end=291, endoftext=289)
  np.testing.assert_array_equal(tatok.codes_to_token_ids([7], small), [305 + 7])
  with pytest.raises(ValueError, match="not a code token"):
    tatok.token_ids_to_codes([151669])
  with pytest.raises(ValueError, match="outside the codebook"):
    tatok.codes_to_token_ids([65536])


def test_checkpoint_round_trip_of_random_params(tmp_path):
  config = tatok.TATokConfig.tiny(codebook_size=64)
  params = tatok.init_params(config, jax.random.key(0, impl="rbg"))  # rbg: threefry compiles slowly on CPU
  tatok.save_checkpoint(tmp_path / "ck", config, params)
  config2, params2, _ = tatok.load_checkpoint(tmp_path / "ck")
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
