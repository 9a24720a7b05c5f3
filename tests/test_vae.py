"""Wan VAE: parity with diffusers' AutoencoderKLWan (Wan2.2 and Wan2.1 flavours), causal chunked decoding,
bit-exact conversion round trips, and named errors for bad checkpoints, configs and inputs."""

import json

import jax
import numpy as np
import pytest
import torch
from conftest import copy_checkpoint, randomize_weights
from diffusers import AutoencoderKLWan

from planx_jax import vae
from planx_jax.convert import wan_vae
from planx_jax.convert.safetensors_io import SafetensorsReader

# Tiny configs of both flavours; the frame sizes give 2 x 2 latents.
FLAVOURS = {"wan2_2": (vae.VAEConfig.tiny(), 32), "wan2_1": (vae.VAEConfig.tiny_2_1(), 16)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """On 2 cores torch's thread pool and XLA's spin against each other (tiny torch convs take seconds)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _diffusers_kwargs(config: vae.VAEConfig) -> dict:
  return {k: v for k, v in wan_vae.config_to_diffusers(config).items() if not k.startswith("_")}


def _build_reference(config: vae.VAEConfig, seed: int) -> AutoencoderKLWan:
  torch.manual_seed(seed)
  model = AutoencoderKLWan(**_diffusers_kwargs(config)).eval()
  return randomize_weights(model, seed, 0.05)  # activations stay O(1): decoded pixels mostly inside (-1, 1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """name -> (diffusers model, its directory, planx config, planx params), built once per module."""
  cache = {}

  def get(name):
    if name not in cache:
      config, _ = FLAVOURS[name]
      model = _build_reference(config, seed=len(cache) + 3)
      path = tmp_path_factory.mktemp(f"vae_{name}")
      model.save_pretrained(path)
      loaded_config, params = vae.load_diffusers(path)
      cache[name] = model, path, loaded_config, params
    return cache[name]

  return get


def _to_torch(x):
  return torch.tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 4, 1, 2, 3)))


def _from_torch(x):
  return x.detach().numpy().transpose(0, 2, 3, 4, 1)


# --- parity ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 5, 9])
@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_encode_and_decode_match_diffusers(name, frames, reference):
  model, _, config, params = reference(name)
  _, size = FLAVOURS[name]
  assert config == FLAVOURS[name][0]
  rng = np.random.RandomState(frames)
  video = rng.uniform(-1, 1, (2, frames, size, size, 3)).astype(np.float32)
  mean, std = np.asarray(config.latents_mean, np.float32), np.asarray(config.latents_std, np.float32)
  with torch.no_grad():
    mu = _from_torch(model.encode(_to_torch(video)).latent_dist.mean)
  expected = (mu - mean) / std  # the Wan pipelines' normalisation
  latents = np.asarray(vae.encode(config, params, video))
  assert latents.shape == (2, 1 + (frames - 1) // 4, 2, 2, config.z_dim) == expected.shape
  assert np.abs(expected).mean() > 0.1
  np.testing.assert_allclose(latents, expected, atol=1e-4, rtol=0)

  z = rng.randn(*expected.shape).astype(np.float32)
  with torch.no_grad():
    pixels = _from_torch(model.decode(_to_torch(z * std + mean)).sample)
  decoded = np.asarray(vae.decode(config, params, z))
  assert decoded.shape == (2, frames, size, size, 3) == pixels.shape
  assert np.mean(np.abs(pixels) < 1) > 0.9  # the clamp does not hide the comparison
  np.testing.assert_allclose(decoded, pixels, atol=1e-4, rtol=0)


# --- causal decoding -------------------------------------------------------------------------------------------


def test_chunked_decoding_with_the_cache_equals_decoding_the_whole_clip(reference):
  _, _, config, params = reference("wan2_2")
  z = np.random.RandomState(7).randn(2, 4, 2, 2, config.z_dim).astype(np.float32)
  # One chunk holding the whole clip: every causal conv sees all frames at once, no cache involved.
  whole, _ = vae.decode_chunk(config, params, z, vae.init_decode_cache(config, 2, 2, 2))
  assert whole.shape == (2, 13, 32, 32, 3)
  frame_by_frame = np.asarray(vae.decode(config, params, z))  # decode_chunk one latent frame at a time
  # Same arithmetic in a different order (convolutions over other frame windows): fp32 rounding only.
  np.testing.assert_allclose(frame_by_frame, whole, atol=1e-5, rtol=0)

  cache, pieces = vae.init_decode_cache(config, 2, 2, 2), []
  for start, stop in ((0, 1), (1, 3), (3, 4)):
    video, cache = vae.decode_chunk(config, params, z[:, start:stop], cache)
    pieces.append(video)
  assert [p.shape[1] for p in pieces] == [1, 8, 4] and cache.started
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=1e-5, rtol=0)


def test_decode_cache_is_a_pytree_of_fixed_shapes(reference):
  _, _, config, params = reference("wan2_2")
  cache = vae.init_decode_cache(config, 2, 2, 2)
  leaves = jax.tree.leaves(cache)
  assert leaves and all(not np.any(np.asarray(leaf)) for leaf in leaves) and not cache.started
  _, after = vae.decode_chunk(config, params, np.zeros((2, 1, 2, 2, config.z_dim), np.float32), cache)
  assert jax.tree.structure(after.features) == jax.tree.structure(cache.features)
  assert [x.shape for x in jax.tree.leaves(after)] == [x.shape for x in leaves]
  with pytest.raises(ValueError, match=r"does not match the cache, made for batch 2 and 2x2 latents"):
    vae.decode_chunk(config, params, np.zeros((2, 1, 3, 2, config.z_dim), np.float32), after)
  # The program every later latent frame runs reports its scratch memory ahead of time.
  program = vae.compile_decode_chunk(config, params, 2, 2, 2, first=False)
  assert 0 < program.memory_analysis().temp_size_in_bytes < 2**24


# --- conversion ---------------------------------------------------------------------------------------------------


def _tensors(path):
  return dict(SafetensorsReader(path).items())


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_round_trip_is_bit_exact_and_loads_in_diffusers(name, reference, tmp_path):
  model, src, config, params = reference(name)
  vae.save_diffusers(config, params, tmp_path / "out", max_shard_bytes=40_000)
  assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1  # sharded with an index
  original, exported = _tensors(src), _tensors(tmp_path / "out")
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  reloaded = AutoencoderKLWan.from_pretrained(tmp_path / "out")
  assert dict(reloaded.config)["temperal_downsample"] == list(config.temporal_downsample)
  assert reloaded.config.scale_factor_spatial == config.scale_factor_spatial
  state, expected = reloaded.state_dict(), model.state_dict()
  assert sorted(state) == sorted(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
  assert vae.load_diffusers(tmp_path / "out")[0] == config


@pytest.mark.parametrize("preset", ["wan2_2", "wan2_1"])
def test_full_size_tables_match_diffusers_state_dict(preset):
  config = vae.VAEConfig.preset(preset)
  with torch.device("meta"):
    model = AutoencoderKLWan(**_diffusers_kwargs(config))
  expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert {rule.ref_key: rule.ref_shape for rule in wan_vae.table(config)} == expected
  assert (config.scale_factor_temporal, config.scale_factor_spatial) == ((4, 16) if preset == "wan2_2" else (4, 8))


def test_planx_checkpoint_round_trip(reference, tmp_path):
  _, _, config, params = reference("wan2_1")
  vae.save_checkpoint(tmp_path / "ckpt", config, params)
  loaded_config, loaded, meta = vae.load_checkpoint(tmp_path / "ckpt")
  assert loaded_config == config and meta["kind"] == "vae"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match=r"cannot override \['z_dim'\]"):
    vae.load_checkpoint(tmp_path / "ckpt", z_dim=8)


def _copy_with(src, dst, edit=None, config_edit=None):
  return copy_checkpoint(src, dst, edit, config_edit, weights="diffusion_pytorch_model.safetensors")


def test_missing_unexpected_and_misshapen_tensors_are_named(reference, tmp_path):
  _, src, _, _ = reference("wan2_2")
  key = "decoder.up_blocks.0.upsampler.time_conv.weight"
  with pytest.raises(ValueError, match=rf"missing tensor '{key}' \(expected shape \(48, 24, 3, 1, 1\)\)"):
    vae.load_diffusers(_copy_with(src, tmp_path / "a", lambda t: t.pop(key)))
  with pytest.raises(ValueError, match=r"unexpected tensors \['decoder.up_blocks.3.upsampler.resample.1.weight'\]"):
    vae.load_diffusers(_copy_with(src, tmp_path / "b", lambda t: t.update(
        {"decoder.up_blocks.3.upsampler.resample.1.weight": np.zeros((2, 2), np.float32)})))

  def shrink(t):
    t["encoder.conv_in.weight"] = t["encoder.conv_in.weight"][:, :3]

  with pytest.raises(ValueError, match=r"'encoder.conv_in.weight'.*\(8, 3, 3, 3, 3\), expected \(8, 12, 3, 3, 3\)"):
    vae.load_diffusers(_copy_with(src, tmp_path / "c", shrink))
  with pytest.raises(ValueError, match=r"'decoder.conv_out.bias'.*shape \(12,\), expected \(3,\) from the config"):
    vae.load_diffusers(_copy_with(src, tmp_path / "d", config_edit=lambda c: c.update(
        patch_size=None, in_channels=3, out_channels=3)))  # a config that does not fit the tensors


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(_class_name="AutoencoderKLLTXVideo"), "AutoencoderKLLTXVideo"),
    (lambda c: c.update(clip_output=True), r"keys \['clip_output'\]"),
    (lambda c: c.update(temperal_downsample=[True, True]), "temporal_downsample has 2 entries"),
    (lambda c: c.update(latents_std=[1.0] * 3), "latents_std has 3 values, expected z_dim=4"),
    (lambda c: c.update(attn_scales=[1.0]), "encoder attention blocks are not supported"),
])
def test_unsupported_or_inconsistent_configs_are_refused(edit, message, reference):
  values = json.loads((reference("wan2_2")[1] / "config.json").read_text())
  edit(values)
  with pytest.raises(ValueError, match=message):
    wan_vae.config_from_diffusers(values)


def test_pickle_and_missing_paths(tmp_path, reference):
  (tmp_path / "config.json").write_text((reference("wan2_2")[1] / "config.json").read_text())
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"x")
  with pytest.raises(ValueError, match="pickle checkpoint"):
    vae.load_diffusers(tmp_path)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    vae.load_diffusers(tmp_path / "nowhere")


# --- bad inputs ----------------------------------------------------------------------------------------------------


def _never_compute(*args, **kwargs):
  raise AssertionError("the model ran on invalid input")


@pytest.mark.parametrize("shape, dtype, message", [
    ((1, 4, 32, 32, 3), np.float32, r"4 frames .*expected 1 \+ 4 k frames"),
    ((1, 5, 24, 32, 3), np.float32, r"24x32 .*multiples of 16"),
    ((1, 5, 32, 40, 3), np.float32, r"32x40 .*multiples of 16"),
    ((1, 5, 32, 32, 4), np.float32, "4 channels .*expects 3"),
    ((5, 32, 32, 3), np.float32, "rank 5"),
    ((1, 1, 32, 32, 3), np.int32, "floating point"),
])
def test_bad_videos_are_refused_before_compute(shape, dtype, message, monkeypatch):
  from planx_jax.models import vae_coding

  monkeypatch.setattr(vae_coding, "_encode_chunk", _never_compute)
  with pytest.raises(ValueError, match=message):
    vae.encode(vae.VAEConfig.tiny(), {}, np.zeros(shape, dtype))


@pytest.mark.parametrize("shape, message", [
    ((1, 2, 2, 2, 8), "8 channels .*z_dim=4"),
    ((2, 2, 2, 4), "rank 5"),
    ((1, 0, 2, 2, 4), "empty axis"),
])
def test_bad_latents_are_refused_before_compute(shape, message, monkeypatch):
  from planx_jax.models import vae_coding

  monkeypatch.setattr(vae_coding, "_decode_chunk", _never_compute)
  with pytest.raises(ValueError, match=message):
    vae.decode(vae.VAEConfig.tiny(), {}, np.zeros(shape, np.float32))


def test_configs_and_presets():
  big = vae.VAEConfig.wan2_2()
  assert (big.z_dim, big.base_dim, big.decoder_dim, big.patch_size, big.video_channels) == (48, 160, 256, 2, 3)
  assert len(big.latents_mean) == len(big.latents_std) == 48
  small = vae.VAEConfig.wan2_1()
  assert (small.z_dim, small.base_dim, small.decoder_dim, small.patch_size) == (16, 96, 96, 1)
  assert vae.VAEConfig.from_dict(big.to_dict()) == big
  with pytest.raises(ValueError, match="unknown VAEConfig config key 'temperal_downsample'"):
    vae.VAEConfig.from_dict({"temperal_downsample": [True]})
  with pytest.raises(ValueError, match="multiples of patch_size"):
    vae.VAEConfig.tiny(in_channels=10)
  with pytest.raises(ValueError, match=r"attn_scales=\(0.5,\): encoder attention blocks are not supported"):
    vae.VAEConfig.tiny(attn_scales=[0.5])
  with pytest.raises(ValueError, match="do not split into"):
    vae.VAEConfig.tiny(base_dim=6, decoder_base_dim=12, dim_mult=(1, 3, 3, 3))
