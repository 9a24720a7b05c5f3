"""SigLIP vision tower parity with transformers (SiglipVisionModel, Siglip2VisionModel NaFlex), position-table
interpolation, early stop, presets vs transformers' configs, and HF conversion (round trips, named errors)."""

import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import randomize_weights
from safetensors.numpy import load_file, save_file
from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

from planx_jax.convert import siglip as convert
from planx_jax.convert.safetensors_io import SafetensorsReader
from planx_jax.models.siglip import SigLIPVision, abstract_params, init_params, param_logical_axes
from planx_jax.models.siglip_config import SigLIPConfig

ATOL = 1e-4

# Tiny SigLIP v1 towers: head_dim 72 with an image size not divisible by the patch (30 / 4 -> 7x7 patches),
# planx's `tiny` preset (27x27 grid), and a headless 4-channel one.
V1_CONFIGS = {
    "d72_crop": dict(hidden_size=144, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                     image_size=30, patch_size=4),
    "tiny": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=54,
                 patch_size=2),
    "no_head": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                    patch_size=8, num_channels=4, vision_use_head=False),
}
TEXT_CONFIG = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=8, bos_token_id=1, eos_token_id=2)


def _random(model, seed):
  torch.manual_seed(seed)
  return randomize_weights(model.eval(), seed, 0.1)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """name -> (transformers vision model, checkpoint dir). "d72_crop" is saved as a full SiglipModel (vision +
  text tower); the others as SiglipVisionModel."""
  out = {}
  for seed, (name, values) in enumerate(V1_CONFIGS.items()):
    path = tmp_path_factory.mktemp(f"siglip_{name}")
    if name == "d72_crop":
      full = _random(transformers.SiglipModel(transformers.SiglipConfig(vision_config=values,
                                                                        text_config=TEXT_CONFIG)), seed)
      full.save_pretrained(path)
      out[name] = (full.vision_model, path)
    else:
      model = _random(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**values)), seed)
      model.save_pretrained(path)
      out[name] = (model, path)
  return out


@pytest.fixture(scope="module")
def naflex_model():
  """Siglip2VisionModel shaped like TA-Tok's decoder at tiny width: patch 1 over 40 channels, 16x16 table."""
  config = transformers.Siglip2VisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, patch_size=1, num_channels=40, num_patches=256)
  return _random(transformers.Siglip2VisionModel(config), 7)


@functools.lru_cache(maxsize=None)
def _forward(config: SigLIPConfig, interpolate: bool = False, num_layers: int | None = None):
  return jax.jit(lambda params, images: SigLIPVision(config).apply(
      {"params": params}, images, interpolate_pos_encoding=interpolate, num_layers=num_layers))


def _images(shape, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def _assert_matches(ours, theirs):
  assert len(ours["hidden_states"]) == len(theirs.hidden_states)
  for i, (a, b) in enumerate(zip(ours["hidden_states"], theirs.hidden_states)):
    np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=ATOL, rtol=0, err_msg=f"hidden_states[{i}]")
  np.testing.assert_allclose(np.asarray(ours["last_hidden_state"]), theirs.last_hidden_state.numpy(), atol=ATOL,
                             rtol=0)
  if theirs.pooler_output is None:
    assert ours["pooled"] is None
  else:
    np.testing.assert_allclose(np.asarray(ours["pooled"]), theirs.pooler_output.numpy(), atol=ATOL, rtol=0)


def _hf_v1(model, images, **kwargs):
  with torch.no_grad():
    return model(torch.tensor(images).permute(0, 3, 1, 2), output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("name", sorted(V1_CONFIGS))
def test_v1_parity_every_hidden_state(name, hf_dirs):
  model, path = hf_dirs[name]
  config, params = convert.load_siglip_hf(path)
  size = config.image_size
  images = _images((2, size, size, config.num_channels), seed=len(name))
  _assert_matches(_forward(config)(params, images), _hf_v1(model, images))


def test_interpolated_position_table_matches_transformers(hf_dirs):
  model, path = hf_dirs["tiny"]
  config, params = convert.load_siglip_hf(path)
  for shape in ((1, 38, 46, 3), (1, 62, 62, 3)):  # 19x23 and 31x31 patch grids vs the 27x27 table
    images = _images(shape, seed=shape[1])
    _assert_matches(_forward(config, interpolate=True)(params, images),
                    _hf_v1(model, images, interpolate_pos_encoding=True))
  with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
    SigLIPVision(config).apply({"params": params}, _images((1, 38, 46, 3)))


@pytest.mark.parametrize("grid", [27, 13, 9])
def test_naflex_parity(grid, naflex_model):
  config = convert.config_from_hf(naflex_model.config.to_dict())
  assert config.naflex and config.position_embedding_size == 16 and config.patch_size == 1
  params = convert.params_from_state_dict(config, {k: v.numpy() for k, v in naflex_model.state_dict().items()},
                                          prefix="")
  codes = np.random.RandomState(grid).randn(2, grid, grid, 40).astype(np.float32)
  with torch.no_grad():
    theirs = naflex_model(torch.tensor(codes.reshape(2, grid * grid, 40)),
                          torch.ones(2, grid * grid, dtype=torch.int32), torch.tensor([[grid, grid]] * 2),
                          output_hidden_states=True)
  _assert_matches(_forward(config)(params, codes), theirs)


def test_naflex_patch_order_matches_the_siglip2_processor(tmp_path):
  values = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, patch_size=2,
                num_channels=3, num_patches=64)
  model = _random(transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**values)), 3)
  model.save_pretrained(tmp_path / "siglip2")
  config, params = convert.load_siglip_hf(tmp_path / "siglip2")
  assert config.position_embedding_size == 8 and config.patch_dim == 12
  images = _images((2, 12, 20, 3))  # a 6x10 patch grid from an 8x8 table
  patches = torch.tensor(np.stack([convert_image_to_patches(im.transpose(2, 0, 1), 2) for im in images]))
  with torch.no_grad():
    theirs = model(patches, torch.ones(2, 60, dtype=torch.int32), torch.tensor([[6, 10]] * 2),
                   output_hidden_states=True)
  _assert_matches(_forward(config)(params, images), theirs)
  convert.save_siglip_hf(config, params, tmp_path / "out")
  reloaded = transformers.Siglip2VisionModel.from_pretrained(tmp_path / "out").state_dict()
  assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())
  with pytest.raises(ValueError, match="multiples of patch_size 2"):
    SigLIPVision(config).apply({"params": params}, _images((1, 12, 19, 3)))


def test_early_stop_is_a_prefix_of_the_full_run(hf_dirs):
  config, params = convert.load_siglip_hf(hf_dirs["tiny"][1])
  images = _images((1, 54, 54, 3), seed=5)
  full = _forward(config)(params, images)
  early = _forward(config, num_layers=2)(params, images)
  assert len(early["hidden_states"]) == 3 and early["last_hidden_state"] is None and early["pooled"] is None
  for a, b in zip(early["hidden_states"], full["hidden_states"]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for bad in (0, 4, -1, 1.5):
    with pytest.raises(ValueError, match=r"num_layers must be an int in \[1, 3\]"):
      SigLIPVision(config).apply({"params": params}, images, num_layers=bad)


def test_bad_images_are_named(hf_dirs):
  config, params = convert.load_siglip_hf(hf_dirs["tiny"][1])
  apply = SigLIPVision(config).apply
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    apply({"params": params}, np.zeros((54, 54, 3), np.float32))
  with pytest.raises(ValueError, match="4 channels, the tower expects num_channels=3"):
    apply({"params": params}, np.zeros((1, 54, 54, 4), np.float32))
  with pytest.raises(ValueError, match="smaller than one 2x2 patch"):
    apply({"params": params}, np.zeros((1, 1, 54, 3), np.float32), interpolate_pos_encoding=True)


def test_presets_mirror_transformers_configs():
  so400m = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                           num_attention_heads=16, patch_size=14, image_size=384)
  config = convert.config_from_hf(so400m.to_dict())
  assert config == SigLIPConfig.siglip2_so400m_patch14_384()
  assert (config.head_dim, config.grid_size, config.num_positions) == (72, 27, 729)
  # Tar: Siglip2VisionConfig() updated with patch_size 1, depth, num_channels = D and the encoder's width.
  tar_decoder = transformers.Siglip2VisionConfig()
  tar_decoder.update({"patch_size": 1, "num_hidden_layers": 3, "num_channels": 24, "hidden_size": 1152})
  decoder = convert.config_from_hf(tar_decoder.to_dict())
  assert decoder == SigLIPConfig.tatok_decoder(24)
  assert (decoder.head_dim, decoder.num_positions, decoder.patch_dim) == (96, 256, 24)
  tiny = SigLIPConfig.tiny()
  assert convert.config_from_hf(transformers.SiglipVisionConfig(**V1_CONFIGS["tiny"]).to_dict()) == tiny
  assert tiny.grid_size == 27 and [tiny.grid_size // k for k in (1, 2, 3)] == [27, 13, 9]
  for config in (tiny, decoder, tiny.replace(use_head=False, num_channels=4)):
    assert convert.config_from_hf(convert.config_to_hf(config)) == config
  assert SigLIPConfig.from_dict(decoder.to_dict()) == decoder


def test_config_errors_are_named():
  with pytest.raises(ValueError, match="hidden_size 50 is not divisible by num_heads 4"):
    SigLIPConfig.tiny(hidden_size=50)
  with pytest.raises(ValueError, match="image_size 1 is smaller than patch_size 2"):
    SigLIPConfig.tiny(image_size=1)
  with pytest.raises(ValueError, match="num_layers must be a positive int"):
    SigLIPConfig.tiny(num_layers=0)
  with pytest.raises(ValueError, match="unknown SigLIPConfig config key 'num_hidden_layers'"):
    SigLIPConfig.tiny(num_hidden_layers=2)
  with pytest.raises(ValueError, match="text tower"):
    convert.config_from_hf({"model_type": "siglip_text_model", "hidden_size": 16})
  with pytest.raises(ValueError, match="model_type 'clip_vision_model'"):
    convert.config_from_hf({"model_type": "clip_vision_model"})
  with pytest.raises(ValueError, match="not square"):
    convert.config_from_hf({"model_type": "siglip_vision_model", "image_size": [224, 256]})
  with pytest.raises(ValueError, match="hidden_act is 'gelu'"):
    convert.config_from_hf({"model_type": "siglip", "vision_config": {"hidden_act": "gelu"}})
  with pytest.raises(ValueError, match="num_patches=200 is not a square"):
    convert.config_from_hf({"model_type": "siglip2", "vision_config": {"num_patches": 200}})


def test_full_model_round_trip_is_bit_exact_and_transformers_loads_it(hf_dirs, tmp_path):
  model, path = hf_dirs["d72_crop"]
  original = load_file(str(path / "model.safetensors"))
  assert any(k.startswith("text_model.") for k in original) and "logit_scale" in original
  config, params = convert.load_siglip_hf(path)
  convert.save_siglip_hf(config, params, tmp_path / "out")
  saved = load_file(str(tmp_path / "out" / "model.safetensors"))
  vision = {k: v for k, v in original.items() if k.startswith("vision_model.")}
  assert sorted(saved) == sorted(vision)
  for key, value in vision.items():
    assert saved[key].dtype == value.dtype
    np.testing.assert_array_equal(saved[key], value, err_msg=key)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "siglip_vision_model"
  again_config, again = convert.load_siglip_hf(tmp_path / "out")
  assert again_config == config
  assert jax.tree.structure(again) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  loaded = transformers.SiglipVisionModel.from_pretrained(tmp_path / "out").eval()
  images = _images((1, 30, 30, 3), seed=9)
  ours, theirs = _hf_v1(loaded, images), _hf_v1(model, images)
  assert torch.equal(ours.pooler_output, theirs.pooler_output)


def test_sharded_and_bfloat16_exports(hf_dirs, tmp_path):
  config, params = convert.load_siglip_hf(hf_dirs["tiny"][1])
  convert.save_siglip_hf(config, params, tmp_path / "sharded", max_shard_bytes=20_000)
  assert len(set(json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
                 .values())) > 2
  _, sharded = convert.load_siglip_hf(tmp_path / "sharded")
  jax.tree.map(np.testing.assert_array_equal, sharded, params)
  convert.save_siglip_hf(config, params, tmp_path / "bf16", dtype="bfloat16")
  _, bf16 = convert.load_siglip_hf(tmp_path / "bf16", param_dtype=None)
  assert {str(x.dtype) for x in jax.tree.leaves(bf16)} == {"bfloat16"}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=1e-2, atol=1e-2), bf16,
               params)


def test_state_dict_under_a_prefix_round_trips(hf_dirs):
  """Tar keeps the tower under `encoder.` next to its own tensors; only the prefixed keys are read."""
  config, params = convert.load_siglip_hf(hf_dirs["no_head"][1])
  tensors = convert.params_to_state_dict(config, params, prefix="encoder.")
  assert "encoder.embeddings.patch_embedding.weight" in tensors and not any("head." in k for k in tensors)
  neighbours = {"encode_task_layer.0.weight": np.zeros((32, 32), np.float32), "decoder.x": np.zeros(3, np.float32)}
  again = convert.params_from_state_dict(config, {**tensors, **neighbours}, prefix="encoder.")
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert "head" not in again and sorted(again) == sorted(abstract_params(config))
  without = {k: v for k, v in tensors.items() if k != "encoder.post_layernorm.bias"}
  with pytest.raises(ValueError, match="state dict is missing tensor 'encoder.post_layernorm.bias'"):
    convert.params_from_state_dict(config, without, prefix="encoder.")
  buffer = {**tensors, "encoder.embeddings.position_ids": np.arange(4)[None]}
  with pytest.raises(ValueError, match=r"unexpected tensors \['encoder.embeddings.position_ids'\]"):
    convert.params_from_state_dict(config, buffer, prefix="encoder.")
  del params["layers_0"]["mlp"]
  with pytest.raises(ValueError, match="params have no entry layers/mlp/fc1/kernel"):
    convert.params_to_state_dict(config, params, prefix="encoder.")


def test_init_params_match_the_converted_tree(hf_dirs):
  shapes = {name: jax.tree.map(lambda x: x.shape, convert.load_siglip_hf(path)[1])
            for name, (_, path) in hf_dirs.items()}
  for name, values in V1_CONFIGS.items():
    config = convert.config_from_hf(transformers.SiglipVisionConfig(**values).to_dict())
    assert jax.tree.map(lambda x: x.shape, abstract_params(config)) == shapes[name], name
  config, _ = convert.load_siglip_hf(hf_dirs["no_head"][1])
  params = init_params(config, jax.random.key(1, impl="rbg"))  # rbg: XLA:CPU compiles threefry slowly
  assert jax.tree.map(lambda x: x.shape, params) == shapes["no_head"]
  images = _images((1, 16, 16, 4))
  out = _forward(config)(params, images)
  assert out["pooled"] is None and np.isfinite(np.asarray(out["last_hidden_state"])).all()
  bf16 = _forward(config.replace(dtype="bfloat16"))(params, images)  # bf16 compute, fp32 params
  assert {h.dtype for h in bf16["hidden_states"]} == {np.dtype("bfloat16")}
  np.testing.assert_allclose(np.asarray(bf16["last_hidden_state"], np.float32), np.asarray(out["last_hidden_state"]),
                             atol=0.1, rtol=0.05)
  axes = param_logical_axes(config)
  assert tuple(axes["layers_0"]["self_attn"]["q"]["kernel"]) == ("embed", "heads", "head_dim")
  assert tuple(axes["layers_0"]["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(axes["patch_embedding"]["kernel"]) == (None, None, None, "embed")


def _write(path, tensors, config_dir):
  path.mkdir()
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  (path / "config.json").write_text((config_dir / "config.json").read_text())
  return path


def test_bad_checkpoints_are_named(hf_dirs, tmp_path):
  src = hf_dirs["d72_crop"][1]
  tensors = dict(SafetensorsReader(src).items())
  missing = {k: v for k, v in tensors.items() if k != "vision_model.encoder.layers.1.mlp.fc2.bias"}
  with pytest.raises(ValueError, match="missing tensor 'vision_model.encoder.layers.1.mlp.fc2.bias'"):
    convert.load_siglip_hf(_write(tmp_path / "missing", missing, src))
  extra = {**tensors, "vision_model.encoder.layers.2.mlp.fc1.bias": np.zeros(96, np.float32)}
  with pytest.raises(ValueError, match=r"unexpected tensors \['vision_model.encoder.layers.2.mlp.fc1.bias'\]"):
    convert.load_siglip_hf(_write(tmp_path / "extra", extra, src))
  shaped = {**tensors, "vision_model.embeddings.position_embedding.weight": np.zeros((50, 144), np.float32)}
  with pytest.raises(ValueError, match=r"position_embedding.weight' .* has shape \(50, 144\), expected \(49, 144\)"):
    convert.load_siglip_hf(_write(tmp_path / "shaped", shaped, src))
  stray = {**tensors, "projector.weight": np.zeros(3, np.float32)}
  with pytest.raises(ValueError, match=r"\['projector.weight'\] outside the vision and text towers"):
    convert.load_siglip_hf(_write(tmp_path / "stray", stray, src))
  text_only = {k: v for k, v in tensors.items() if not k.startswith("vision_model.")}
  with pytest.raises(ValueError, match="no SigLIP vision tower"):
    convert.load_siglip_hf(_write(tmp_path / "text_only", text_only, src))
  with pytest.raises(ValueError, match="no tensors under prefix 'decoder.vision_model.'"):
    convert.params_from_state_dict(SigLIPConfig.tiny(), tensors, prefix="decoder.vision_model.")
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    convert.load_siglip_hf(tmp_path)
