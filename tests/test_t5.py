"""umT5 text encoder: parity with transformers' UMT5EncoderModel (ragged padding masks, long sequences), Wan's
trim-and-pad `encode`, prompt encoding with a tiny in-process tokenizer, conversion round trips and named errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import copy_checkpoint, randomize_weights
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from planx_jax import t5
from planx_jax.convert.safetensors_io import SafetensorsReader
from planx_jax.models.t5 import clamp_fp16

# Tiny umT5 configs: widths 32 / 48, head dims 8 / 12, 2 / 3 layers; umT5's buckets (32 over 128) and a
# smaller table (20 buckets over 48 positions) so both have sequences reaching past the max distance.
TINY_UMT5 = {
    "d32_b20": dict(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                    relative_attention_num_buckets=20, relative_attention_max_distance=48),
    "d48_b32": dict(vocab_size=300, d_model=48, d_kv=12, num_heads=4, d_ff=96, num_layers=3),
}
SEQ_LEN = {"d32_b20": 70, "d48_b32": 160}
WEIGHT_SCALE = 0.15  # unscaled attention logits grow fast with the weights; 0.15 keeps fp32 error near 1e-5

_CORPUS = [
    "A golden retriever runs across a green park while children play in the background.",
    "The camera slowly pans from left to right over a quiet city street at night.",
    "A woman in a blue dress walks along the beach as waves roll onto the sand.",
    "Rain falls on the window while a man reads a book next to a warm lamp.",
    "Fireworks explode over the harbour and their light reflects on the water.",
    "Bright colours, overexposed, static, blurred details, subtitles, worst quality, low quality.",
]


def _build(cls, name, seed):
  torch.manual_seed(seed)
  return randomize_weights(cls(transformers.UMT5Config(**TINY_UMT5[name])).eval(), seed, WEIGHT_SCALE)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """name -> directory of a tiny random UMT5EncoderModel (saved by transformers)."""
  dirs = {}
  for seed, name in enumerate(sorted(TINY_UMT5)):
    dirs[name] = tmp_path_factory.mktemp(f"umt5_{name}")
    _build(transformers.UMT5EncoderModel, name, seed).save_pretrained(dirs[name])
  return dirs


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A tiny sentencepiece-style Unigram tokenizer like umT5's (<pad>=0, </s>=1 appended, <unk>=2), saved."""
  backend = Tokenizer(models.Unigram())
  backend.pre_tokenizer = pre_tokenizers.Metaspace()
  backend.train_from_iterator(_CORPUS, trainers.UnigramTrainer(
      vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
  backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                                   unk_token="<unk>")
  path = tmp_path_factory.mktemp("umt5_tokenizer")
  tokenizer.save_pretrained(path)
  return path


def _hf_hidden(path_or_model, ids, mask):
  model = path_or_model
  if not isinstance(model, torch.nn.Module):
    model = transformers.UMT5EncoderModel.from_pretrained(path_or_model).eval()
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state


def _wan_pipeline_embeddings(hidden, mask, text_len):
  """diffusers WanPipeline._get_t5_prompt_embeds after the encoder: trim to the mask length, zero-pad."""
  lengths = torch.tensor(mask).gt(0).sum(dim=1).long()
  rows = [u[:v] for u, v in zip(hidden, lengths)]
  return torch.stack([torch.cat([u, u.new_zeros(text_len - u.size(0), u.size(1))]) for u in rows]).numpy()


def _ragged_batch(config, length, seed):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, config.vocab_size, (3, length))
  lengths = np.array([length, length - 37, 5])
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  return ids, mask, lengths


def _tensors(path):
  return dict(SafetensorsReader(path).items())


def _flat(tree, prefix=""):
  out = {}
  for key in sorted(tree):
    if isinstance(tree[key], dict):
      out.update(_flat(tree[key], f"{prefix}{key}/"))
    else:
      out[prefix + key] = tree[key]
  return out


# --- numerics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (20, 48), (33, 100), (8, 20), (64, 300)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
  config = transformers.UMT5Config(relative_attention_num_buckets=num_buckets,
                                   relative_attention_max_distance=max_distance, d_model=8, d_kv=2, num_heads=4)
  length = 700
  relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  expected = UMT5Attention(config, has_relative_attention_bias=True)._relative_position_bucket(relative).numpy()
  np.testing.assert_array_equal(t5.relative_position_buckets(length, num_buckets, max_distance), expected)


@pytest.mark.parametrize("name", sorted(TINY_UMT5))
def test_parity_with_transformers_and_wan_padding(name, hf_dirs):
  config, params = t5.load_hf(hf_dirs[name])
  ids, mask, lengths = _ragged_batch(config, SEQ_LEN[name], seed=SEQ_LEN[name])
  reference = _hf_hidden(hf_dirs[name], ids, mask)
  hidden = np.asarray(t5.T5Encoder(config).apply({"params": params}, ids, mask))
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(hidden[row, :n], reference[row, :n].numpy(), atol=1e-4, rtol=0, err_msg=f"row {row}")

  embeddings = t5.encode(config, params, ids, mask)
  assert embeddings.shape == (3, config.text_len, config.d_model) and embeddings.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(embeddings), _wan_pipeline_embeddings(reference, mask, config.text_len),
                             atol=1e-4, rtol=0)
  assert not np.asarray(embeddings)[2, lengths[2]:].any()


def test_each_layer_uses_its_own_position_bias(hf_dirs):
  config, params = t5.load_hf(hf_dirs["d32_b20"])
  ids, mask, _ = _ragged_batch(config, 40, seed=3)
  base = np.asarray(t5.encode(config, params, ids, mask))
  tables = params["layers"]["attn"]["relative_attention_bias"]
  swapped = {**params, "layers": {**params["layers"], "attn": {**params["layers"]["attn"],
                                                                "relative_attention_bias": tables[::-1]}}}
  assert np.abs(np.asarray(t5.encode(config, swapped, ids, mask)) - base).max() > 1e-2


def test_fp16_clamp_matches_transformers_and_bf16_stays_close(hf_dirs):
  for values in ([1.0, -np.inf, np.inf, 65504.0], [1.0, -6.0e4, 2.0]):
    x = np.array(values, np.float16)
    expected = torch.tensor(x)
    big = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(expected).any(), big - 1000, big)
    expected = torch.clamp(expected, min=-limit, max=limit).numpy()
    np.testing.assert_array_equal(np.asarray(clamp_fp16(jnp.asarray(x))), expected)
  assert clamp_fp16(jnp.array([jnp.inf], jnp.float32)).item() == np.inf

  config, params = t5.load_hf(hf_dirs["d32_b20"])
  ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 30))
  mask = np.ones_like(ids)
  full = np.asarray(t5.encode(config, params, ids, mask))
  half = np.asarray(t5.encode(config.replace(dtype="bfloat16"), params, ids, mask)).astype(np.float32)
  assert np.isfinite(half).all()
  assert np.abs(half - full).max() < 0.05 * np.abs(full).max()


# --- prompts -----------------------------------------------------------------------------------------------------


def test_clean_prompt_follows_the_wan_pipeline():
  from diffusers.pipelines.wan.pipeline_wan import prompt_clean

  for text in ["  a &amp;amp; b \n\t c  ", "Fish &lt;3 chips", "plain"]:
    assert t5.clean_prompt(text) == prompt_clean(text)


def test_encode_prompts_with_a_tiny_tokenizer(hf_dirs, tokenizer_dir):
  tokenizer = t5.load_tokenizer(tokenizer_dir)
  assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
  config, params = t5.load_hf(hf_dirs["d48_b32"])
  prompts = ["A golden retriever runs across a green park.", "  Rain &amp; a warm lamp  ", " ".join(_CORPUS)]
  embeddings, mask = t5.encode_prompts(config, params, tokenizer, prompts)
  assert embeddings.shape == (3, 512, config.d_model) and mask.shape == (3, 512)

  expected = tokenizer([t5.clean_prompt(p) for p in prompts], padding="max_length", max_length=512,
                       truncation=True, add_special_tokens=True, return_tensors="np")
  np.testing.assert_array_equal(np.asarray(mask), expected["attention_mask"])
  lengths = np.asarray(mask).sum(1)
  assert 5 < lengths[1] < lengths[0] < lengths[2] < 512
  for row, n in enumerate(lengths):
    assert expected["input_ids"][row, n - 1] == tokenizer.eos_token_id  # </s> closes each prompt
    assert not np.asarray(embeddings)[row, n:].any() and np.abs(np.asarray(embeddings)[row, n - 1]).sum() > 0
  reference = _hf_hidden(hf_dirs["d48_b32"], expected["input_ids"], expected["attention_mask"])
  np.testing.assert_allclose(np.asarray(embeddings), _wan_pipeline_embeddings(reference, expected["attention_mask"],
                                                                             512), atol=1e-4, rtol=0)

  short = config.replace(text_len=16)
  truncated, truncated_mask = t5.encode_prompts(short, params, tokenizer, prompts[2])
  assert truncated.shape == (1, 16, config.d_model) and np.asarray(truncated_mask).sum() == 16


def test_prompt_errors(hf_dirs, tmp_path):
  config, params = t5.load_hf(hf_dirs["d32_b20"])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    t5.load_tokenizer(tmp_path / "nowhere")
  backend = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
  with pytest.raises(ValueError, match="expected a transformers tokenizer"):
    t5.encode_prompts(config, params, backend, ["a"])
  with pytest.raises(ValueError, match="no pad token"):
    t5.encode_prompts(config, params, transformers.PreTrainedTokenizerFast(tokenizer_object=backend), ["a"])
  with pytest.raises(ValueError, match="prompts is empty"):
    t5.encode_prompts(config, params, transformers.PreTrainedTokenizerFast(tokenizer_object=backend), [])
  with pytest.raises(ValueError, match=r"prompts\[1\] is a int"):
    t5.tokenize_prompts(config, transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="a"),
                        ["a", 3])


# --- bad input -----------------------------------------------------------------------------------------------


def test_encode_rejects_bad_inputs_before_tracing(hf_dirs):
  config, params = t5.load_hf(hf_dirs["d32_b20"], text_len=8)
  ids, mask = np.ones((2, 6), np.int32), np.ones((2, 6), np.int32)
  cases = [
      (ids, mask[:, :5], r"mask has shape \(2, 5\), expected the token_ids shape \(2, 6\)"),
      (ids[0], mask[0], r"token_ids must be \[B, L\]"),
      (np.where(np.arange(6) == 4, config.vocab_size, ids), mask, r"token id 300 is outside the vocabulary \[0, 300\)"),
      (-ids, mask, r"token id -1 is outside"),
      (ids.astype(np.float32), mask, "token_ids must be integers"),
      (np.ones((2, 9), np.int32), np.ones((2, 9), np.int32), "9 tokens, more than text_len=8"),
      (ids, 2 * mask, "mask must hold 0/1"),
      (ids, np.array([[1, 1, 0, 1, 0, 0]] * 2), "mask row 0 has tokens after padding"),
  ]
  for bad_ids, bad_mask, message in cases:
    with pytest.raises(ValueError, match=message):
      t5.encode(config, params, bad_ids, bad_mask)
  traced = jax.jit(lambda i, m: t5.encode(config, params, i, m))(ids, mask)  # values unchecked under jit
  assert traced.shape == (2, 8, config.d_model)
  np.testing.assert_allclose(np.asarray(t5.encode(config, params, ids, mask.astype(bool))), np.asarray(traced),
                             atol=1e-6, rtol=0)


def test_config_presets_and_validation():
  xxl = t5.T5Config.umt5_xxl()
  assert (xxl.vocab_size, xxl.d_model, xxl.d_kv, xxl.num_heads, xxl.d_ff, xxl.num_layers) == (
      256384, 4096, 64, 64, 10240, 24)
  assert (xxl.relative_attention_num_buckets, xxl.relative_attention_max_distance, xxl.text_len) == (32, 128, 512)
  assert t5.T5Config.preset("tiny") == t5.T5Config.tiny()
  with torch.device("meta"):
    reference = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24))
  assert t5.param_count(xxl) == sum(p.numel() for p in reference.parameters())
  with pytest.raises(ValueError, match="feed_forward_proj 'relu' is not supported"):
    t5.T5Config.tiny(feed_forward_proj="relu")
  with pytest.raises(ValueError, match="relative_attention_num_buckets must be >= 4"):
    t5.T5Config.tiny(relative_attention_num_buckets=2)
  with pytest.raises(ValueError, match="unknown T5Config config key 'd_modle'"):
    t5.T5Config.tiny(d_modle=3)


# --- conversion and checkpoints ----------------------------------------------------------------------------------


def test_init_params_have_the_converted_structure(hf_dirs):
  config, params = t5.load_hf(hf_dirs["d48_b32"])
  initial = _flat(t5.init_params(config, jax.random.key(0)))
  loaded = _flat(params)
  assert sorted(initial) == sorted(loaded)
  assert all(initial[k].shape == loaded[k].shape for k in loaded)
  model = transformers.UMT5EncoderModel.from_pretrained(hf_dirs["d48_b32"])
  assert t5.param_count(config) == sum(p.numel() for p in model.parameters())
  assert set(_flat(t5.param_logical_axes(config))) == set(loaded)


@pytest.mark.parametrize("name", sorted(TINY_UMT5))
def test_round_trip_is_bit_exact_and_transformers_loads_it(name, hf_dirs, tmp_path):
  src = hf_dirs[name]
  config, params = t5.load_hf(src, scan_layers=name == "d48_b32")
  t5.save_hf(config, params, tmp_path / "out")
  original, exported = _tensors(src), _tensors(tmp_path / "out")
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  again_config, again = t5.load_hf(tmp_path / "out")
  assert again_config == config.replace(scan_layers=True)
  ids, mask, _ = _ragged_batch(config, 50, seed=5)
  assert torch.equal(_hf_hidden(tmp_path / "out", ids, mask), _hf_hidden(src, ids, mask))


def test_sharded_export_and_checkpoint_round_trip(hf_dirs, tmp_path):
  config, params = t5.load_hf(hf_dirs["d32_b20"])
  t5.save_hf(config, params, tmp_path / "sharded", max_shard_bytes=20_000)
  index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  _, sharded = t5.load_hf(tmp_path / "sharded")
  for key, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(sharded)[key], value, err_msg=key)

  t5.save_checkpoint(tmp_path / "ckpt", config, params)
  loaded_config, loaded, meta = t5.load_checkpoint(tmp_path / "ckpt", scan_layers=False, text_len=64)
  assert meta["kind"] == "t5" and loaded_config == config.replace(scan_layers=False, text_len=64)
  assert "layers_1" in loaded and "layers" not in loaded
  for key, value in _flat(t5.load_hf(hf_dirs["d32_b20"], scan_layers=False)[1]).items():
    np.testing.assert_array_equal(_flat(loaded)[key], value, err_msg=key)
  ids, mask, _ = _ragged_batch(config, 20, seed=6)  # unrolled layers compute what the scanned ones do
  unrolled = np.asarray(t5.encode(loaded_config, loaded, ids, mask))
  assert unrolled.shape == (3, 64, config.d_model)
  np.testing.assert_allclose(unrolled[:, :20], np.asarray(t5.encode(config, params, ids, mask))[:, :20], atol=1e-6,
                             rtol=0)
  with pytest.raises(ValueError, match=r"cannot override \['d_model'\]"):
    t5.load_checkpoint(tmp_path / "ckpt", d_model=64)


def test_seq2seq_and_aliased_embedding_checkpoints(tmp_path):
  name = "d32_b20"
  full = _build(transformers.UMT5ForConditionalGeneration, name, seed=7)
  full.save_pretrained(tmp_path / "seq2seq")
  assert any(k.startswith("decoder.") for k in _tensors(tmp_path / "seq2seq"))
  config, params = t5.load_hf(tmp_path / "seq2seq")
  encoder = transformers.UMT5EncoderModel.from_pretrained(tmp_path / "seq2seq").eval()
  ids, mask, lengths = _ragged_batch(config, 60, seed=8)
  reference = _hf_hidden(encoder, ids, mask)
  np.testing.assert_allclose(np.asarray(t5.encode(config, params, ids, mask)),
                             _wan_pipeline_embeddings(reference, mask, config.text_len), atol=1e-4, rtol=0)

  tensors = {k: v for k, v in _tensors(tmp_path / "seq2seq").items() if not k.startswith(("decoder.", "lm_head"))}
  (tmp_path / "alias").mkdir()
  (tmp_path / "alias" / "config.json").write_text((tmp_path / "seq2seq" / "config.json").read_text())
  aliased = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in tensors.items()}
  save_file(aliased, str(tmp_path / "alias" / "model.safetensors"))
  np.testing.assert_array_equal(t5.load_hf(tmp_path / "alias")[1]["embed"]["embedding"],
                                params["embed"]["embedding"])
  both = {**tensors, "encoder.embed_tokens.weight": tensors["shared.weight"] + 1}
  save_file(both, str(tmp_path / "alias" / "model.safetensors"))
  with pytest.raises(ValueError, match="encoder.embed_tokens.weight different from shared.weight"):
    t5.load_hf(tmp_path / "alias")


def _copy_with(src, dst, edit=None, config_edit=None):
  return copy_checkpoint(src, dst, edit, config_edit, weights="model.safetensors")


def test_bad_checkpoints_name_the_tensor(hf_dirs, tmp_path):
  src = hf_dirs["d32_b20"]
  key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
  with pytest.raises(ValueError, match=rf"missing tensor '{key}' \(expected shape \(20, 4\)\)"):
    t5.load_hf(_copy_with(src, tmp_path / "a", lambda t: t.pop(key)))
  with pytest.raises(ValueError, match=r"unexpected tensors \['encoder.block.0.layer.0.SelfAttention.q.bias'\]"):
    t5.load_hf(_copy_with(src, tmp_path / "b", lambda t: t.update(
        {"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(32, np.float32)})))

  def shrink(t):
    t["encoder.block.0.layer.1.DenseReluDense.wo.weight"] = t["encoder.block.0.layer.1.DenseReluDense.wo.weight"][:-1]

  with pytest.raises(ValueError, match=r"'encoder.block.0.layer.1.DenseReluDense.wo.weight'.*shape \(31, 64\), "
                                       r"expected \(32, 64\)"):
    t5.load_hf(_copy_with(src, tmp_path / "c", shrink))
  with pytest.raises(ValueError, match="model_type 't5'.*umT5"):
    t5.load_hf(_copy_with(src, tmp_path / "d", config_edit=lambda c: c.update(model_type="t5")))
  with pytest.raises(ValueError, match="feed_forward_proj is 'relu'"):
    t5.load_hf(_copy_with(src, tmp_path / "e", config_edit=lambda c: c.update(feed_forward_proj="relu")))
  with pytest.raises(ValueError, match="is_decoder=true"):
    t5.load_hf(_copy_with(src, tmp_path / "f", config_edit=lambda c: c.update(is_decoder=True)))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    t5.load_hf(tmp_path / "nowhere")
