"""Planner throughput, planx (JAX, jit) against transformers (PyTorch) on the same CPU, same weights, same run.

Measures full-sequence forward tokens/s and KV-cache greedy decode tokens/s at the
given batch sizes, and prints a table with the planx / transformers ratio. Not a
test: nothing here asserts a speed.

  python -m planx_jax.tools.bench_planner            # ~100M-parameter Qwen2 config
  python -m planx_jax.tools.bench_planner --tiny     # seconds; smoke run
"""

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from planx_jax import planner
from planx_jax.convert import qwen2
from planx_jax.models.layer_layout import unstack_layers
from planx_jax.sampling import SamplingConfig, generate
from planx_jax.tools.timing import median_seconds

# About 100M parameters: 12 Qwen2 layers of width 768 (GQA 12/2, head_dim 64) and a 32K tied vocabulary.
BENCH_CONFIG = dict(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
                    num_kv_heads=2, head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096)
TINY_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=16, tie_word_embeddings=True, max_position_embeddings=1024)


def build_models(config: planner.PlannerConfig, seed: int = 0):
  """Same random weights in transformers and planx (through the converter)."""
  torch.manual_seed(seed)
  hf_config = transformers.Qwen2Config(**qwen2.config_to_hf(config))
  hf_model = transformers.Qwen2ForCausalLM(hf_config).eval()
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(tmp)
    loaded_config, params = planner.load_hf(tmp)
  params = jax.tree.map(jnp.asarray, params)
  return hf_model, loaded_config, params


def bench_forward(hf_model, config, params, batch: int, length: int, repeats: int):
  ids = np.random.RandomState(0).randint(0, config.vocab_size, (batch, length))
  forward = jax.jit(planner.Planner(config).apply)
  jax_ids = jnp.asarray(ids)
  planx_s = median_seconds(lambda: forward({"params": params}, jax_ids).block_until_ready(), repeats)
  torch_ids = torch.tensor(ids)

  def hf_forward():
    with torch.no_grad():
      hf_model(torch_ids, use_cache=False)

  hf_s = median_seconds(hf_forward, repeats)
  return batch * length / planx_s, batch * length / hf_s


def bench_decode(hf_model, config, params, batch: int, prompt_len: int, new_tokens: int, repeats: int):
  prompts = np.random.RandomState(1).randint(0, config.vocab_size, (batch, prompt_len))
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens)
  rng = jax.random.key(0)

  def planx_decode():
    out = generate(config, params, list(prompts), rng, sampling, stop_token=None)
    out.tokens.block_until_ready()

  compile_start = time.perf_counter()
  planx_decode()
  compile_s = time.perf_counter() - compile_start
  planx_s = median_seconds(planx_decode, repeats)
  torch_prompts = torch.tensor(prompts)

  def hf_decode():
    with torch.no_grad():
      hf_model.generate(torch_prompts, attention_mask=torch.ones_like(torch_prompts), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)

  hf_s = median_seconds(hf_decode, repeats)
  return batch * new_tokens / planx_s, batch * new_tokens / hf_s, compile_s


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny config, few tokens: a smoke run")
  parser.add_argument("--batches", default="1,8", help="decode batch sizes (comma-separated)")
  parser.add_argument("--prompt-len", type=int, default=64)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--forward-batch", type=int, default=4)
  parser.add_argument("--forward-len", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.tiny:
    args.prompt_len, args.new_tokens, args.forward_len, args.repeats = 8, 8, 32, 1
  config = planner.PlannerConfig.from_dict(TINY_CONFIG if args.tiny else BENCH_CONFIG)
  torch.set_num_threads(os.cpu_count() or 1)
  hf_model, config, params = build_models(config)
  layouts = {"scan": (config, params)}
  unrolled = config.replace(scan_layers=False)
  layouts["unrolled"] = (unrolled, unstack_layers(params, config.num_layers))
  print(f"planner {planner.param_count(config) / 1e6:.1f}M params, fp32, {jax.devices()[0].platform} "
        f"({os.cpu_count()} cores); jax {jax.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
  print(f"{'measurement':<36} {'layers':>8} {'planx tok/s':>12} {'transformers tok/s':>19} {'ratio':>7}")
  for name, (cfg, prm) in layouts.items():
    planx_tps, hf_tps = bench_forward(hf_model, cfg, prm, args.forward_batch, args.forward_len, args.repeats)
    label = f"forward B={args.forward_batch} L={args.forward_len}"
    print(f"{label:<36} {name:>8} {planx_tps:>12.0f} {hf_tps:>19.0f} {planx_tps / hf_tps:>6.2f}x")
  for batch in (int(b) for b in args.batches.split(",")):
    for name, (cfg, prm) in layouts.items():
      planx_tps, hf_tps, compile_s = bench_decode(hf_model, cfg, prm, batch, args.prompt_len, args.new_tokens,
                                                  args.repeats)
      label = f"greedy decode B={batch} P={args.prompt_len} N={args.new_tokens}"
      print(f"{label:<36} {name:>8} {planx_tps:>12.1f} {hf_tps:>19.1f} {planx_tps / hf_tps:>6.2f}x"
            f"   (planx first call incl. compile {compile_s:.1f}s)")


if __name__ == "__main__":
  main()
