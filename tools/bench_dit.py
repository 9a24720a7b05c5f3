"""DiT forward throughput, planx (JAX, jit) against diffusers' WanTransformer3DModel (PyTorch) on the same CPU,
same weights (through the converter), same run. Prints a table with the planx / diffusers ratio; asserts nothing.

  python -m planx_jax.tools.bench_dit            # ~50M-parameter Wan config, 5 latent frames
  python -m planx_jax.tools.bench_dit --tiny     # seconds; smoke run
"""

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import WanTransformer3DModel

from planx_jax import dit
from planx_jax.convert.wan_dit import config_to_diffusers
from planx_jax.tools.timing import median_seconds

# About 50M parameters: 10 Wan blocks of width 512 (8 heads of 64), FFN 2048, Wan's 48 latent channels and
# 4096-wide umT5 text states.
BENCH_CONFIG = dict(num_heads=8, head_dim=64, in_channels=48, out_channels=48, text_dim=4096, freq_dim=256,
                    ffn_dim=2048, num_layers=10)
TINY_CONFIG = dict(num_heads=2, head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                   num_layers=2)


def build_models(config: dit.DiTConfig, seed: int = 0):
  torch.manual_seed(seed)
  reference = WanTransformer3DModel(**{k: v for k, v in config_to_diffusers(config).items()
                                       if not k.startswith("_")}).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    loaded, params = dit.load_diffusers(tmp, scan_layers=config.scan_layers)
  return reference, loaded, jax.tree.map(jnp.asarray, params)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny config and latents: a smoke run")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--frames", type=int, default=5, help="latent frames")
  parser.add_argument("--size", type=int, default=32, help="latent height and width")
  parser.add_argument("--text-len", type=int, default=512, help="text tokens (Wan pads umT5 states to 512)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.tiny:
    args.frames, args.size, args.text_len, args.repeats = 2, 8, 8, 1
  torch.set_num_threads(os.cpu_count() or 1)
  base = dit.DiTConfig.from_dict(TINY_CONFIG if args.tiny else BENCH_CONFIG)
  rng = np.random.RandomState(0)
  latents = rng.randn(args.batch, args.frames, args.size, args.size, base.in_channels).astype(np.float32)
  text = rng.randn(args.batch, args.text_len, base.text_dim).astype(np.float32)
  timestep = np.full((args.batch,), 500.0, np.float32)
  tokens = args.batch * args.frames * (args.size // 2) ** 2
  print(f"Wan DiT {dit.param_count(base) / 1e6:.1f}M params, fp32, latents {list(latents.shape)} ({tokens} video "
        f"tokens), text {args.text_len}; {jax.devices()[0].platform} ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"torch {torch.__version__}")
  print(f"{'measurement':<26} {'blocks':>9} {'planx ms':>10} {'diffusers ms':>13} {'ratio':>7}")
  torch_inputs = (torch.tensor(latents.transpose(0, 4, 1, 2, 3)), torch.tensor(timestep), torch.tensor(text))
  for scan in (True, False):
    reference, config, params = build_models(base.replace(scan_layers=scan))
    forward = jax.jit(dit.DiT(config).apply)
    jax_inputs = (jnp.asarray(latents), jnp.asarray(timestep), jnp.asarray(text))
    planx_s = median_seconds(lambda: forward({"params": params}, *jax_inputs).block_until_ready(), args.repeats)

    def diffusers_forward():
      with torch.no_grad():
        reference(*torch_inputs)

    ref_s = median_seconds(diffusers_forward, args.repeats)
    layout = "scan" if scan else "unrolled"
    print(f"{'forward':<26} {layout:>9} {planx_s * 1e3:>10.1f} {ref_s * 1e3:>13.1f} {ref_s / planx_s:>6.2f}x")


if __name__ == "__main__":
  main()
