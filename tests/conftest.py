"""Shared pytest setup: CPU JAX, quiet libtpu, and the tiny reference models the tests build."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several pytest processes may compile for TPU at once

import json  # noqa: E402

import pytest  # noqa: E402

# XLA's fast CPU compile settings (LLVM -O0, the classic fusion emitters) for tests that run whole programs in a
# subprocess: their time is compiling tiny programs, and none of what they check depends on CPU code generation.
FAST_CPU_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def fast_compile_env(extra_xla_flags: str = "") -> dict:
  """os.environ with FAST_CPU_COMPILE (and `extra_xla_flags`) added to XLA_FLAGS, for a test's subprocess."""
  flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), extra_xla_flags, FAST_CPU_COMPILE) if f)
  return dict(os.environ, XLA_FLAGS=flags)

def copy_checkpoint(src, dst, edit=None, config_edit=None, weights: str = "model.safetensors"):
  """Copies a single-file checkpoint directory, editing its tensors dict and / or config dict on the way (for
  tests of bad checkpoints); returns `dst`."""
  from safetensors.numpy import load_file, save_file

  dst.mkdir()
  config = json.loads((src / "config.json").read_text())
  if config_edit:
    config_edit(config)
  (dst / "config.json").write_text(json.dumps(config))
  tensors = load_file(str(src / weights))
  if edit:
    edit(tensors)
  save_file(tensors, str(dst / weights), metadata={"format": "pt"})
  return dst


def randomize_weights(model, seed: int, scale: float):
  """Overwrites every tensor of a torch model with normal(0, scale) noise (norm scales around 1); returns it."""
  import torch

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * scale
      param.copy_(noise + 1.0 if "norm" in name else noise)
  return model


# Tiny Qwen2 configs covering tied / untied embeddings, GQA ratios 1, 2 and 7, and
# hidden sizes that are not powers of two (45 is odd: head_dim is set explicitly).
TINY_QWEN2_CONFIGS = {
    "tied_mha": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "untied_gqa2": dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "tied_gqa7": dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True),
    "untied_odd": dict(hidden_size=45, num_attention_heads=6, num_key_value_heads=3, head_dim=10,
                       tie_word_embeddings=False),
}


def build_hf_qwen2(seed: int = 0, vocab_size: int = 320, num_hidden_layers: int = 3, **kwargs):
  """A transformers Qwen2ForCausalLM with every tensor random (biases and norm scales too), fp32, eval mode."""
  import torch
  import transformers

  values = dict(vocab_size=vocab_size, intermediate_size=96, num_hidden_layers=num_hidden_layers,
                max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6)
  values.update(kwargs)
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**values)).eval()
  return randomize_weights(model, seed, 0.1)


@pytest.fixture(scope="session")
def hf_qwen2_dir(tmp_path_factory):
  """Returns a function name -> directory holding that tiny HF checkpoint (built once per session)."""
  cache = {}

  def get(name: str):
    if name not in cache:
      path = tmp_path_factory.mktemp(f"hf_{name}")
      build_hf_qwen2(seed=len(cache), **TINY_QWEN2_CONFIGS[name]).save_pretrained(path)
      cache[name] = path
    return cache[name]

  return get


def read_json(path):
  with open(path) as f:
    return json.load(f)


# Tiny diffusers WanTransformer3DModel configs: head counts, head dims, patch sizes, cross-attn norm on/off.
TINY_WAN_CONFIGS = {
    "h3_d12": dict(num_attention_heads=3, attention_head_dim=12, in_channels=6, out_channels=6, text_dim=20,
                   freq_dim=16, ffn_dim=40, num_layers=2),
    "h2_d18_patch2": dict(patch_size=(2, 2, 2), num_attention_heads=2, attention_head_dim=18, in_channels=4,
                          out_channels=4, text_dim=24, freq_dim=32, ffn_dim=36, num_layers=3),
    "h4_d8_out5_nonorm": dict(num_attention_heads=4, attention_head_dim=8, in_channels=5, out_channels=7,
                              text_dim=16, freq_dim=8, ffn_dim=64, num_layers=2, cross_attn_norm=False),
}


def build_wan_dit(seed: int = 0, **kwargs):
  """A diffusers WanTransformer3DModel with every tensor random (norms near 1), fp32, eval mode."""
  import torch
  from diffusers import WanTransformer3DModel

  values = dict(patch_size=(1, 2, 2), rope_max_seq_len=64)
  values.update(kwargs)
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**values).eval()
  return randomize_weights(model, seed, 0.2)


@pytest.fixture(scope="session")
def wan_dit_dir(tmp_path_factory):
  """Returns a function name -> directory holding that tiny diffusers Wan transformer (built once)."""
  cache = {}

  def get(name: str):
    if name not in cache:
      path = tmp_path_factory.mktemp(f"wan_{name}")
      build_wan_dit(seed=len(cache) + 10, **TINY_WAN_CONFIGS[name]).save_pretrained(path)
      cache[name] = path
    return cache[name]

  return get
