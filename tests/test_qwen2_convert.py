"""HF Qwen2 <-> planx conversion: bit-exact round trips, extended vocabulary, sharding, dtypes, errors."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from conftest import copy_checkpoint
from planx_jax import planner
from planx_jax.convert import qwen2
from planx_jax.convert.safetensors_io import SafetensorsReader
from planx_jax.plan_tokens import PlanTokens


def _tensors(path):
  return dict(SafetensorsReader(path).items())


def _hf_logits(path, ids, **kwargs):
  model = transformers.Qwen2ForCausalLM.from_pretrained(path, **kwargs).eval()
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


@pytest.mark.parametrize("name", ["tied_mha", "untied_odd"])
def test_round_trip_is_bit_exact(name, hf_qwen2_dir, tmp_path):
  src = hf_qwen2_dir(name)
  config, params = planner.load_hf(src)
  planner.save_hf(config, params, tmp_path / "out")
  original, exported = _tensors(src), _tensors(tmp_path / "out")
  original.pop("lm_head.weight", None) if config.tie_word_embeddings else None
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 19))
  np.testing.assert_array_equal(_hf_logits(tmp_path / "out", ids), _hf_logits(src, ids))


def test_extended_vocabulary_round_trip(hf_qwen2_dir, tmp_path):
  src = hf_qwen2_dir("untied_gqa2")  # 320 embedding rows
  config, params = planner.load_hf(src)
  layout = PlanTokens(text_vocab_size=300, codebook_size=64, chat_im_start=290, chat_im_end=291, endoftext=289)
  codebook = np.random.RandomState(1).randn(64, config.hidden_size).astype(np.float32)
  ext_config, ext = planner.extend_vocab(config, params, layout, codebook=codebook)
  assert ext_config.vocab_size == layout.vocab_size == 369
  table = ext["embed"]["embedding"]
  np.testing.assert_array_equal(table[:300], params["embed"]["embedding"][:300])
  mean = params["embed"]["embedding"][:300].mean(0)
  np.testing.assert_allclose(table[300:305], np.broadcast_to(mean, (5, config.hidden_size)), rtol=1e-6)
  np.testing.assert_array_equal(table[layout.code_offset:], codebook)
  np.testing.assert_array_equal(ext["lm_head"]["kernel"][:, layout.code_offset:], codebook.T)

  planner.save_hf(ext_config, ext, tmp_path / "ext")
  ids = np.random.RandomState(2).randint(0, layout.vocab_size, (2, 23))
  ids[:, :5] = [layout.im_start, layout.scale_token(2), layout.code_to_id(7), layout.code_to_id(63), layout.im_end]
  ours = np.asarray(planner.Planner(ext_config).apply({"params": ext}, jnp.asarray(ids)))
  np.testing.assert_allclose(_hf_logits(tmp_path / "ext", ids), ours, atol=1e-4, rtol=0)
  again_config, again = planner.load_hf(tmp_path / "ext")
  assert again_config == ext_config
  for path in (("embed", "embedding"), ("lm_head", "kernel"), ("layers", "attn", "q", "bias")):
    a, b = again, ext
    for part in path:
      a, b = a[part], b[part]
    np.testing.assert_array_equal(a, b)


def test_extend_vocab_mean_init_and_width_check(hf_qwen2_dir):
  config, params = planner.load_hf(hf_qwen2_dir("tied_mha"))
  layout = PlanTokens(text_vocab_size=310, codebook_size=16, chat_im_start=300, chat_im_end=301, endoftext=302)
  ext_config, ext = planner.extend_vocab(config, params, layout)
  assert "lm_head" not in ext and ext_config.vocab_size == 310 + 5 + 16
  mean = params["embed"]["embedding"][:310].astype(np.float64).mean(0)
  np.testing.assert_allclose(ext["embed"]["embedding"][310:], np.broadcast_to(mean, (21, 64)), rtol=0, atol=1e-7)
  with pytest.raises(ValueError, match=r"codebook has shape \(16, 32\).*\(16, 64\)"):
    planner.extend_vocab(config, params, layout, codebook=np.zeros((16, 32), np.float32))
  with pytest.raises(ValueError, match="fewer than the tokenizer"):
    planner.extend_vocab(config, params, PlanTokens(text_vocab_size=400, codebook_size=4, chat_im_start=1,
                                                    chat_im_end=2, endoftext=3))


def test_sharded_export_loads_in_transformers(hf_qwen2_dir, tmp_path):
  src = hf_qwen2_dir("tied_gqa7")
  config, params = planner.load_hf(src)
  planner.save_hf(config, params, tmp_path / "sharded", max_shard_bytes=40_000)
  index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  ids = np.random.RandomState(3).randint(0, config.vocab_size, (1, 11))
  np.testing.assert_array_equal(_hf_logits(tmp_path / "sharded", ids), _hf_logits(src, ids))
  again_config, again = planner.load_hf(tmp_path / "sharded")
  assert again_config == config
  np.testing.assert_array_equal(again["layers"]["mlp"]["down"]["kernel"], params["layers"]["mlp"]["down"]["kernel"])


def test_bfloat16_checkpoint_round_trip(hf_qwen2_dir, tmp_path):
  model = transformers.Qwen2ForCausalLM.from_pretrained(hf_qwen2_dir("untied_gqa2"), dtype=torch.bfloat16)
  model.save_pretrained(tmp_path / "bf16")
  config, params = planner.load_hf(tmp_path / "bf16")
  assert params["embed"]["embedding"].dtype == np.float32
  planner.save_hf(config, params, tmp_path / "out", dtype="bfloat16")
  original, exported = _tensors(tmp_path / "bf16"), _tensors(tmp_path / "out")
  assert set(original) == set(exported)
  for key in original:
    assert exported[key].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(exported[key].view(np.uint16), original[key].view(np.uint16), err_msg=key)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  kept_config, kept = planner.load_hf(tmp_path / "bf16", param_dtype=None)
  assert kept["embed"]["embedding"].dtype == ml_dtypes.bfloat16


# --- bad input -------------------------------------------------------------------------------------------------


def _copy_with(src, dst, edit=None, config_edit=None):
  return copy_checkpoint(src, dst, edit, config_edit, weights="model.safetensors")


def test_missing_unexpected_and_misshapen_tensors_are_named(hf_qwen2_dir, tmp_path):
  src = hf_qwen2_dir("untied_gqa2")
  missing = _copy_with(src, tmp_path / "missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape "
                                       r"\(96, 48\)\)"):
    planner.load_hf(missing)
  extra = _copy_with(src, tmp_path / "extra", lambda t: t.update(visual_proj=np.zeros(3, np.float32)))
  with pytest.raises(ValueError, match="unexpected tensors.*visual_proj"):
    planner.load_hf(extra)

  def shrink(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]

  bad = _copy_with(src, tmp_path / "shape", shrink)
  with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.k_proj.weight'.*shape \(23, 48\), expected "
                                       r"\(24, 48\)"):
    planner.load_hf(bad)


def test_pickle_checkpoints_are_refused_with_a_hint(tmp_path, hf_qwen2_dir):
  (tmp_path / "config.json").write_text((hf_qwen2_dir("tied_mha") / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match=r"pickle checkpoint.*safetensors.*safe_serialization=True"):
    planner.load_hf(tmp_path)
  with pytest.raises(ValueError, match="pickle checkpoint"):
    SafetensorsReader(tmp_path / "pytorch_model.bin")


def test_missing_paths_and_unsupported_configs(tmp_path, hf_qwen2_dir):
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    planner.load_hf(tmp_path / "does_not_exist")
  hf = json.loads((hf_qwen2_dir("tied_mha") / "config.json").read_text())
  with pytest.raises(ValueError, match="model_type 'llama'"):
    qwen2.config_from_hf({**hf, "model_type": "llama"})
  with pytest.raises(ValueError, match="use_sliding_window"):
    qwen2.config_from_hf({**hf, "use_sliding_window": True})
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    qwen2.config_from_hf({**hf, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="unknown PlannerConfig config key 'hiden_size'.*did you mean 'hidden_size'"):
    planner.PlannerConfig.from_dict({"hiden_size": 3})
  with pytest.raises(ValueError, match="unknown PlannerConfig config key 'rope_scaling'"):
    qwen2.config_from_hf(hf, rope_scaling=None)


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(hf_qwen2_dir, tmp_path):
  config, params = planner.load_hf(hf_qwen2_dir("tied_mha"))
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").write_text("x")
  with pytest.raises(FileExistsError, match="taken"):
    planner.save_hf(config, params, tmp_path / "taken")
  broken = dict(params)
  broken["final_norm"] = {"scale": np.zeros(3, np.float32)}
  with pytest.raises(ValueError, match="final_norm/scale"):
    planner.save_hf(config, broken, tmp_path / "fails")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_planx_checkpoint_round_trip(hf_qwen2_dir, tmp_path):
  config, params = planner.load_hf(hf_qwen2_dir("untied_odd"))
  layout = PlanTokens(text_vocab_size=300, codebook_size=8, chat_im_start=290, chat_im_end=291, endoftext=289)
  config, params = planner.extend_vocab(config, params, layout)
  planner.save_checkpoint(tmp_path / "ckpt", config, params, plan_tokens=layout)
  loaded_config, loaded, meta = planner.load_checkpoint(tmp_path / "ckpt")
  loaded_layout = meta["plan_tokens"]
  assert loaded_config == config and loaded_layout == layout and meta["kind"] == "planner"
  for a, b in zip(sorted(_flat(params).items()), sorted(_flat(loaded).items())):
    assert a[0] == b[0]
    np.testing.assert_array_equal(np.asarray(b[1]), a[1])
  with pytest.raises(ValueError, match=r"param \['embed'\]\['embedding'\].*shape"):
    import planx_jax.model_checkpoints as ck

    ck.restore_params(tmp_path / "ckpt", planner.abstract_params(config.replace(vocab_size=300)))
  with pytest.raises(FileNotFoundError, match="not a planx checkpoint"):
    planner.load_checkpoint(tmp_path)


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = np.asarray(value)
  return out


def test_layer_layouts_convert_both_ways(hf_qwen2_dir, tmp_path):
  from planx_jax.models import layer_layout

  src = hf_qwen2_dir("tied_gqa7")
  config, stacked = planner.load_hf(src)
  unrolled_config, unrolled = planner.load_hf(src, scan_layers=False)
  assert sorted(k for k in unrolled if k.startswith("layers_")) == [f"layers_{i}" for i in range(3)]
  np.testing.assert_array_equal(unrolled["layers_2"]["attn"]["o"]["kernel"], stacked["layers"]["attn"]["o"]["kernel"][2])
  restacked = layer_layout.stack_layers(unrolled, 3)
  for a, b in zip(sorted(_flat(restacked).items()), sorted(_flat(stacked).items())):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
  planner.save_hf(unrolled_config, unrolled, tmp_path / "from_unrolled")
  original, exported = _tensors(src), _tensors(tmp_path / "from_unrolled")
  for key, value in exported.items():
    np.testing.assert_array_equal(value, original[key], err_msg=key)
  planner.save_checkpoint(tmp_path / "ckpt", config, stacked)
  loaded_config, loaded, _ = planner.load_checkpoint(tmp_path / "ckpt", scan_layers=False)
  assert not loaded_config.scan_layers and "layers_1" in loaded
  with pytest.raises(ValueError, match=r"cannot override \['hidden_size'\]"):
    planner.load_checkpoint(tmp_path / "ckpt", hidden_size=8)
  with pytest.raises(ValueError, match="lack layers_2"):
    layer_layout.stack_layers({"layers_0": {}, "layers_1": {}}, 3)
