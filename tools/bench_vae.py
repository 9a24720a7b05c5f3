"""Wan VAE throughput and decode memory, planx (JAX, jit) against diffusers' AutoencoderKLWan (PyTorch) on the same
CPU, same weights (through the converter), same run. Prints tables with the planx / diffusers ratio; asserts nothing.

  python -m planx_jax.tools.bench_vae            # Wan2.2 architecture at 1/4 width, 9 frames at 64^2 to 256^2
  python -m planx_jax.tools.bench_vae --tiny     # seconds; smoke run (no memory probes)

Memory: each (implementation, frame count) runs in a fresh process that decodes a short warm-up clip, then
reports how far the resident set rises above its level while decoding the measured clip (Linux /proc).
"""

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import AutoencoderKLWan

from planx_jax import vae
from planx_jax.convert.wan_vae import config_to_diffusers
from planx_jax.tools.timing import median_seconds

# The Wan2.2 TI2V-5B VAE (48 latent channels, 2x2 patchify, residual blocks, strides 4 x 16 x 16) at a
# quarter of its width: encoder 40, decoder 64 (the real ones are 160 and 256).
BENCH_CONFIG = vae.VAEConfig.wan2_2(base_dim=40, decoder_base_dim=64)
TINY_CONFIG = vae.VAEConfig.tiny()


def build_models(config: vae.VAEConfig, seed: int = 0):
  """A randomly initialised diffusers model and the same weights as planx params."""
  torch.manual_seed(seed)
  reference = AutoencoderKLWan(**{k: v for k, v in config_to_diffusers(config).items()
                                  if not k.startswith("_")}).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    loaded, params = vae.load_diffusers(tmp)
  return reference, loaded, jax.tree.map(jnp.asarray, params)


def _torch(x: np.ndarray) -> torch.Tensor:
  return torch.tensor(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def _inputs(config: vae.VAEConfig, frames: int, size: int, seed: int = 0):
  rng = np.random.RandomState(seed)
  latent = size // config.scale_factor_spatial
  t_lat = 1 + (frames - 1) // config.scale_factor_temporal
  video = rng.uniform(-1, 1, (1, frames, size, size, config.video_channels)).astype(np.float32)
  latents = rng.randn(1, t_lat, latent, latent, config.z_dim).astype(np.float32)
  return video, latents


def throughput(reference, config, params, frames: int, size: int, repeats: int):
  """Rows (measurement, video, planx fps, diffusers fps) for encode and decode of one clip."""
  video, latents = _inputs(config, frames, size)
  rows = []
  for name, planx_fn, torch_fn in (
      ("encode", lambda: vae.encode(config, params, video).block_until_ready(),
       lambda: reference.encode(_torch(video))),
      ("decode", lambda: vae.decode(config, params, latents).block_until_ready(),
       lambda: reference.decode(_torch(latents))),
  ):
    planx_s = median_seconds(planx_fn, repeats)
    with torch.no_grad():
      ref_s = median_seconds(torch_fn, repeats)
    rows.append((name, f"{frames}x{size}x{size}", frames / planx_s, frames / ref_s))
  return rows


def xla_temp_bytes(config, params, size: int) -> tuple[int, int]:
  """Scratch bytes XLA reserves for the first-frame and the later-frame decode programs."""
  latent = size // config.scale_factor_spatial
  return tuple(vae.compile_decode_chunk(config, params, 1, latent, latent, first).memory_analysis().temp_size_in_bytes
               for first in (True, False))


def _status_bytes(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def probe_decode_memory(impl: str, frames: int, size: int, tiny: bool) -> int:
  """Peak resident-set growth (bytes) while decoding `frames` frames, in this fresh process.

  Both implementations first decode a 2-latent-frame clip (planx compiles its two programs); freed heap
  is handed back to the OS and the kernel's high-water mark reset before the measured decode.
  """
  reference, config, params = build_models(TINY_CONFIG if tiny else BENCH_CONFIG)
  _, warm = _inputs(config, 1 + config.scale_factor_temporal, size)
  _, latents = _inputs(config, frames, size)
  if impl == "planx":
    run = lambda z: np.asarray(vae.decode(config, params, z))  # noqa: E731
  else:
    def run(z):
      with torch.no_grad():
        return reference.decode(_torch(z)).sample.numpy()
  run(warm)
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident set
  base = _status_bytes("VmRSS")
  run(latents)
  return _status_bytes("VmHWM") - base


def measured_growth(impl: str, frames: int, size: int, tiny: bool, runs: int) -> float:
  """Median over `runs` fresh processes of `probe_decode_memory` (the resident set is a noisy instrument)."""
  command = [sys.executable, "-m", "planx_jax.tools.bench_vae", "--probe", impl, str(frames), str(size)]
  growths = []
  for _ in range(runs):
    out = subprocess.run(command + (["--tiny"] if tiny else []), check=True, capture_output=True, text=True)
    growths.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_growth"])
  return statistics.median(growths)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny config and clips, no memory probes: a smoke run")
  parser.add_argument("--frames", type=int, default=9, help="video frames of the timed clips")
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="video heights (= widths)")
  parser.add_argument("--memory-frames", type=int, nargs="+", default=[9, 33])
  parser.add_argument("--memory-size", type=int, default=128)
  parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory cell (median)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--probe", nargs=3, metavar=("IMPL", "FRAMES", "SIZE"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  if args.probe:
    impl, frames, size = args.probe[0], int(args.probe[1]), int(args.probe[2])
    print(json.dumps({"peak_rss_growth": probe_decode_memory(impl, frames, size, args.tiny)}))
    return
  if args.tiny:
    args.frames, args.sizes, args.repeats = 5, [32], 1
  config = TINY_CONFIG if args.tiny else BENCH_CONFIG
  reference, config, params = build_models(config)
  print(f"Wan VAE (2.2 architecture, widths {config.base_dim}/{config.decoder_dim}, z {config.z_dim}) "
        f"{vae.param_count(config) / 1e6:.1f}M params, fp32; {jax.devices()[0].platform} ({os.cpu_count()} cores), "
        f"jax {jax.__version__}, torch {torch.__version__}")
  print(f"{'measurement':<12} {'video':>12} {'planx fps':>10} {'diffusers fps':>14} {'ratio':>7}")
  for size in args.sizes:
    for name, video, planx_fps, ref_fps in throughput(reference, config, params, args.frames, size, args.repeats):
      print(f"{name:<12} {video:>12} {planx_fps:>10.2f} {ref_fps:>14.2f} {planx_fps / ref_fps:>6.2f}x")
  if args.tiny:
    return
  size = args.memory_size
  first, later = xla_temp_bytes(config, params, size)
  print(f"decode at {size}x{size}: XLA temp {first / 2**20:.1f} MiB (first latent frame), {later / 2**20:.1f} MiB "
        "(each later one), whatever the clip length")
  print(f"{'frames':>6} {'output MiB':>11} {'planx MiB':>10} {'diffusers MiB':>14}   (peak RSS growth while decoding, "
        f"median of {args.memory_runs} processes)")
  for frames in args.memory_frames:
    planx_mb, ref_mb = (measured_growth(impl, frames, size, args.tiny, args.memory_runs) / 2**20
                        for impl in ("planx", "diffusers"))
    output = frames * size * size * config.video_channels * 4 / 2**20
    print(f"{frames:>6} {output:>11.1f} {planx_mb:>10.1f} {ref_mb:>14.1f}")


if __name__ == "__main__":
  main()
