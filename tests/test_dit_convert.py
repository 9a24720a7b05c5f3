"""diffusers Wan transformer <-> planx DiT conversion: bit-exact round trips (semantic branch included),
exports diffusers loads, sharding, dtypes, the CLI, and named errors."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import TINY_WAN_CONFIGS, copy_checkpoint
from diffusers import WanTransformer3DModel
from safetensors.numpy import load_file

from planx_jax import dit
from planx_jax.cli import main
from planx_jax.convert import wan_dit
from planx_jax.convert.safetensors_io import SafetensorsReader


def _tensors(path, **kwargs):
  return dict(SafetensorsReader(path, **kwargs).items())


def _velocity(path, seed=0):
  model = WanTransformer3DModel.from_pretrained(path).eval()
  cfg = model.config
  rng = np.random.RandomState(seed)
  latents = torch.tensor(rng.randn(1, cfg.in_channels, 2 * cfg.patch_size[0], 6, 4).astype(np.float32))
  with torch.no_grad():
    return model(latents, torch.tensor([321.0]), torch.tensor(rng.randn(1, 3, cfg.text_dim).astype(np.float32))).sample


@pytest.mark.parametrize("name", sorted(TINY_WAN_CONFIGS))
def test_round_trip_is_bit_exact_and_loads_in_diffusers(name, wan_dit_dir, tmp_path):
  src = wan_dit_dir(name)
  config, params = dit.load_diffusers(src)
  dit.save_diffusers(config, params, tmp_path / "out")
  original, exported = _tensors(src), _tensors(tmp_path / "out")
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert torch.equal(_velocity(tmp_path / "out"), _velocity(src))


def test_semantic_branch_travels_in_its_own_file(wan_dit_dir, tmp_path):
  config, params = dit.add_semantic_branch(*dit.load_diffusers(wan_dit_dir("h3_d12")), 10)
  dit.save_diffusers(config, params, tmp_path / "out")
  semantic = load_file(str(tmp_path / "out" / wan_dit.SEMANTIC_FILE))
  assert "semantic_embedder.linear_1.weight" in semantic and semantic["semantic_embedder.linear_1.weight"].shape == (
      36, 10)
  assert {"blocks.1.attn2.k_sem.weight", "blocks.1.attn2.v_sem.bias", "blocks.0.attn2.norm_k_sem.weight"} <= set(
      semantic)
  np.testing.assert_array_equal(semantic["blocks.1.attn2.k_sem.weight"],
                                _tensors(tmp_path / "out", exclude=(wan_dit.SEMANTIC_FILE,))["blocks.1.attn2.to_k.weight"])
  assert _velocity(tmp_path / "out").shape[1] == config.out_channels  # diffusers ignores the extra file
  again_config, again = dit.load_diffusers(tmp_path / "out")
  assert again_config == config
  for (path, a), b in zip(_flat(params).items(), _flat(again).values()):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)


def test_sharded_and_bfloat16_exports(wan_dit_dir, tmp_path):
  src = wan_dit_dir("h2_d18_patch2")
  config, params = dit.load_diffusers(src)
  dit.save_diffusers(config, params, tmp_path / "sharded", max_shard_bytes=20_000)
  index = json.loads((tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  loaded = WanTransformer3DModel.from_pretrained(tmp_path / "sharded").state_dict()
  reference = WanTransformer3DModel.from_pretrained(src).state_dict()
  assert sorted(loaded) == sorted(reference) and all(torch.equal(loaded[k], reference[k]) for k in reference)
  np.testing.assert_allclose(_velocity(tmp_path / "sharded").numpy(), _velocity(src).numpy(), atol=1e-5, rtol=0)
  dit.save_diffusers(config, params, tmp_path / "bf16", dtype="bfloat16")
  bf16 = _tensors(tmp_path / "bf16")
  assert all(v.dtype == ml_dtypes.bfloat16 for v in bf16.values())
  _, reloaded = dit.load_diffusers(tmp_path / "bf16", param_dtype=None)
  dit.save_diffusers(config, reloaded, tmp_path / "bf16_again")
  for key, value in _tensors(tmp_path / "bf16_again").items():
    np.testing.assert_array_equal(value.view(np.uint16), bf16[key].view(np.uint16), err_msg=key)


def test_cli_round_trip_with_a_semantic_branch(wan_dit_dir, tmp_path):
  src = wan_dit_dir("h4_d8_out5_nonorm")
  assert main(["convert", "dit-from-diffusers", str(src), str(tmp_path / "ckpt"), "--semantic-in-dim", "6"]) == 0
  config, params, meta = dit.load_checkpoint(tmp_path / "ckpt")
  assert config.semantic_in_dim == 6 and meta["kind"] == "dit"
  assert main(["convert", "dit-to-diffusers", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
  original, exported = _tensors(src), _tensors(tmp_path / "out", exclude=(wan_dit.SEMANTIC_FILE,))
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  rng = np.random.RandomState(1)
  latents = jnp.asarray(rng.randn(1, 1, 6, 4, config.in_channels), jnp.float32)
  text = jnp.asarray(rng.randn(1, 3, config.text_dim), jnp.float32)
  sem = jnp.asarray(rng.randn(1, 2, 6), jnp.float32)
  positions = jnp.zeros((1, 2, 3), jnp.float32)
  out = dit.DiT(config).apply({"params": params}, latents, jnp.array([10.0]), text, sem, positions)
  reloaded_config, reloaded = dit.load_diffusers(tmp_path / "out")
  again = dit.DiT(reloaded_config).apply({"params": reloaded}, latents, jnp.array([10.0]), text, sem, positions)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  assert main(["convert", "dit-to-diffusers", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2


# --- bad input -------------------------------------------------------------------------------------------------


def _copy_with(src, dst, edit=None, config_edit=None):
  return copy_checkpoint(src, dst, edit, config_edit, weights="diffusion_pytorch_model.safetensors")


def test_missing_unexpected_and_misshapen_tensors_are_named(wan_dit_dir, tmp_path):
  src = wan_dit_dir("h3_d12")
  with pytest.raises(ValueError, match=r"missing tensor 'blocks.1.attn2.norm_k.weight' \(expected shape \(36,\)\)"):
    dit.load_diffusers(_copy_with(src, tmp_path / "a", lambda t: t.pop("blocks.1.attn2.norm_k.weight")))
  with pytest.raises(ValueError, match="unexpected tensors.*blocks.0.attn2.add_k_proj.weight"):
    dit.load_diffusers(_copy_with(src, tmp_path / "b", lambda t: t.update(
        {"blocks.0.attn2.add_k_proj.weight": np.zeros((2, 2), np.float32)})))

  def shrink(t):
    t["proj_out.weight"] = t["proj_out.weight"][:-1]

  with pytest.raises(ValueError, match=r"'proj_out.weight'.*shape \(23, 36\), expected \(24, 36\)"):
    dit.load_diffusers(_copy_with(src, tmp_path / "c", shrink))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(image_dim=1280), "image_dim=1280"),
    (lambda c: c.update(qk_norm="rms_norm"), "qk_norm is 'rms_norm'"),
    (lambda c: c.update(_class_name="WanVACETransformer3DModel"), "WanVACETransformer3DModel"),
    (lambda c: c.update(shiny_new_option=3), r"keys \['shiny_new_option'\]"),
])
def test_unsupported_configs_are_refused(edit, message, wan_dit_dir, tmp_path):
  values = json.loads((wan_dit_dir("h3_d12") / "config.json").read_text())
  edit(values)
  with pytest.raises(ValueError, match=message):
    wan_dit.config_from_diffusers(values)


def test_pickle_and_missing_paths(tmp_path, wan_dit_dir):
  (tmp_path / "config.json").write_text((wan_dit_dir("h3_d12") / "config.json").read_text())
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"x")
  with pytest.raises(ValueError, match="pickle checkpoint"):
    dit.load_diffusers(tmp_path)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    dit.load_diffusers(tmp_path / "nowhere")


def _flat(tree, prefix=""):
  out = {}
  for key in sorted(tree):
    value = tree[key]
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out
