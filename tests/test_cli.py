"""The `planx` command line: convert both ways, plan from a checkpoint and from the embedded default, errors."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import build_hf_qwen2

from planx_jax import planner
from planx_jax.cli import main
from planx_jax.data.tokenizer import build_tiny_tokenizer, plan_tokens_from_tokenizer
from planx_jax.sampling import validate_plan


@pytest.fixture(scope="module")
def hf_with_tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf_tok")
  build_hf_qwen2(seed=3, vocab_size=416, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=False, max_position_embeddings=2048).save_pretrained(path)
  build_tiny_tokenizer().save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def converted(hf_with_tokenizer, tmp_path_factory):
  dst = tmp_path_factory.mktemp("ckpt") / "planner"
  assert main(["convert", "planner-from-hf", str(hf_with_tokenizer), str(dst), "--codebook-size", "64"]) == 0
  return dst


def test_from_hf_extends_vocab_and_keeps_tokenizer(converted):
  config, params, meta = planner.load_checkpoint(converted)
  layout = meta["plan_tokens"]
  assert layout.text_vocab_size == 403 and layout.codebook_size == 64
  assert config.vocab_size == layout.vocab_size == 472
  tokenizer = transformers.AutoTokenizer.from_pretrained(converted / "tokenizer")
  assert plan_tokens_from_tokenizer(tokenizer) == layout
  assert meta["hf_config"]["model_type"] == "qwen2"


def test_to_hf_round_trip_loads_in_transformers(converted, tmp_path):
  dst = tmp_path / "hf"
  assert main(["convert", "planner-to-hf", str(converted), str(dst), "--max-shard-size", "100KB"]) == 0
  assert (dst / "model.safetensors.index.json").exists()
  config, params, meta = planner.load_checkpoint(converted)
  layout = meta["plan_tokens"]
  ids = np.random.RandomState(0).randint(0, config.vocab_size, (1, 21))
  model = transformers.Qwen2ForCausalLM.from_pretrained(dst).eval()
  with torch.no_grad():
    expected = model(torch.tensor(ids)).logits.numpy()
  got = np.asarray(planner.Planner(config).apply({"params": params}, jnp.asarray(ids)))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  assert plan_tokens_from_tokenizer(transformers.AutoTokenizer.from_pretrained(dst)) == layout


def test_plan_from_checkpoint_writes_codes_and_continues(converted, tmp_path, capsys):
  out = tmp_path / "plan.npy"
  assert main(["plan", str(converted), "--frames", "3", "--num-samples", "2", "--out", str(out)]) == 0
  codes = np.load(out)
  assert codes.shape == (2, 2, 9, 9) and codes.min() >= 0 and codes.max() < 64
  printed = capsys.readouterr().out
  assert printed.count("keyframe") == 4 and "sample 1 keyframe 2 (t = 1.0 s)" in printed
  np.save(tmp_path / "first.npy", codes[0, :1])
  cont = tmp_path / "cont.npy"
  assert main(["plan", str(converted), "--frames", "4", "--continue-from", str(tmp_path / "first.npy"),
               "--out", str(cont), "--seed", "5"]) == 0
  continued = np.load(cont)
  assert continued.shape == (1, 3, 9, 9)
  np.testing.assert_array_equal(continued[0, 0], codes[0, 0])
  first_frame = np.arange(729) % 64
  np.save(tmp_path / "i2v.npy", first_frame)
  assert main(["plan", str(converted), "--frames", "2", "--first-frame-codes", str(tmp_path / "i2v.npy")]) == 0


def test_plan_is_the_same_with_scanned_or_unrolled_layers(converted, tmp_path):
  for flag in ("--scan-layers", "--no-scan-layers"):
    assert main(["plan", str(converted), "--frames", "3", "--seed", "3", "--out", str(tmp_path / f"{flag}.npy"),
                 flag]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "--scan-layers.npy"), np.load(tmp_path / "--no-scan-layers.npy"))


def test_embedded_default_plans(capsys):
  from planx_jax.commands.plan import embedded_default

  assert main(["plan", "--frames", "2", "--temperature", "1.2"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "sample 0 keyframe 1 (t = 0.5 s):" and len(lines) == 10
  config, _, layout, _ = embedded_default()
  assert layout.codebook_size == 65536 and config.vocab_size == layout.vocab_size
  assert all(0 <= int(c) < 65536 for line in lines[1:] for c in line.split())


@pytest.mark.parametrize("argv, message", [
    (["plan", "--frames", "1"], "num_frames must be an int >= 2"),
    (["plan", "does/not/exist"], "not a planx checkpoint"),
    (["plan", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["plan", "--temperature", "-1"], "temperature"),
    (["convert", "planner-from-hf", "missing_src", "dst"], "missing_src"),
    (["convert", "planner-to-hf", "missing_ckpt", "dst", "--max-shard-size", "lots"], "missing_ckpt"),
])
def test_errors_are_one_line_messages(argv, message, capsys):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and err.startswith(f"planx {argv[0]}: error:")


def test_continue_from_too_long_is_rejected(converted, tmp_path, capsys):
  np.save(tmp_path / "long.npy", np.zeros((2, 81), np.int64))
  assert main(["plan", str(converted), "--frames", "3", "--continue-from", str(tmp_path / "long.npy")]) == 2
  assert "nothing left to continue" in capsys.readouterr().err


def test_plans_are_well_formed_token_sequences(converted):
  from planx_jax.data.conversation import build_plan_conversation
  from planx_jax.sampling import SamplingConfig, sample_plans
  import jax

  config, params, meta = planner.load_checkpoint(converted)
  layout = meta["plan_tokens"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(converted / "tokenizer")
  conv = build_plan_conversation(tokenizer, layout, "a cat", "it jumps", 3)
  out = sample_plans(config, params, layout, [conv.token_ids], 3, jax.random.key(1), SamplingConfig(),
                     zero_embed_masks=[conv.first_frame_mask])
  assert validate_plan(np.asarray(out.tokens[0]), layout, 3)
