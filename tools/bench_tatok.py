"""TA-Tok encode throughput, planx (JAX, jit) against a PyTorch reference (transformers SigLIP + Tar's pooling,
task layer, bottleneck and cosine argmax) on the same CPU, same weights, same run; and the peak memory of the
streaming codebook lookup against the dense [N, K] one. Prints tables with ratios; asserts nothing.

  python -m planx_jax.tools.bench_tatok          # so400m-shaped tower (1152 wide, 16 heads, 384 px) at 4 layers
  python -m planx_jax.tools.bench_tatok --tiny   # seconds; smoke run
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers

from planx_jax import tatok
from planx_jax.convert.tatok_tar import config_from_tar, params_from_tar_state
from planx_jax.kernels.codebook import codebook_argmax, dense_codebook_argmax
from planx_jax.tools.timing import median_seconds

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, patch_size=14, image_size=384)
TINY = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, patch_size=2, image_size=54)


class TorchTATok(torch.nn.Module):
  """Tar's encode path in torch ops (no decoder): the peer of `tatok.encode`."""

  def __init__(self, tower: dict, layers: int, code_dim: int, codebook_size: int):
    super().__init__()
    config = transformers.SiglipVisionConfig(num_hidden_layers=layers, layer_norm_eps=1e-6, **tower)
    self.encoder = transformers.SiglipVisionModel(config)
    hidden = tower["hidden_size"]
    self.task = torch.nn.Linear(hidden, hidden)
    self.in_linear = torch.nn.Linear(hidden, code_dim)
    self.out_linear = torch.nn.Linear(code_dim, code_dim)
    self.embedding = torch.nn.Parameter(torch.randn(codebook_size, code_dim))
    self.embedding_proj = torch.nn.Linear(code_dim, code_dim)
    self.grid = tower["image_size"] // tower["patch_size"]

  def codebook(self):
    return F.normalize(self.embedding_proj(self.embedding), dim=-1)

  def forward(self, images, codebook, pool):  # images [B, 3, S, S] in [0, 1]
    feats = self.encoder((images - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
    b, _, c = feats.shape
    feats = F.avg_pool2d(feats.transpose(1, 2).reshape(b, c, self.grid, self.grid), pool, pool)
    z = self.in_linear(torch.tanh(self.task(feats.flatten(2).transpose(1, 2))))
    return torch.einsum("bnd,kd->bnk", F.normalize(z, dim=-1), codebook).argmax(-1)

  def tar_state(self):
    state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
    half = torch.full((1, 3, 1, 1), 0.5)
    state.update({"scale_layer.shift": half, "scale_layer.scale": half,
                  "encode_task_layer.0.weight": self.task.weight, "encode_task_layer.0.bias": self.task.bias,
                  "bottleneck.regularizer.embedding.weight": self.embedding,
                  "bottleneck.regularizer.embedding_proj.weight": self.embedding_proj.weight,
                  "bottleneck.regularizer.embedding_proj.bias": self.embedding_proj.bias})
    for name in ("in_linear", "out_linear"):
      state[f"bottleneck.{name}.weight"] = getattr(self, name).weight
      state[f"bottleneck.{name}.bias"] = getattr(self, name).bias
    return {k: v.detach().numpy().copy() for k, v in state.items()}


def memory_table(n: int, codebook_size: int, code_dim: int, tiles: tuple[int, ...]) -> None:
  z = jax.ShapeDtypeStruct((n, code_dim), jnp.float32)
  codebook = jax.ShapeDtypeStruct((codebook_size, code_dim), jnp.float32)
  scores = n * codebook_size * 4 / 2**20
  print(f"\ncodebook lookup, N={n} x K={codebook_size} codes of width {code_dim} ([N, K] fp32 = {scores:.1f} MiB); "
        "XLA temp bytes from compiled memory_analysis()")
  print(f"{'lookup':<26} {'temp MiB':>10} {'vs dense':>9}")
  dense = jax.jit(dense_codebook_argmax).lower(z, codebook).compile().memory_analysis().temp_size_in_bytes
  print(f"{'dense argmax':<26} {dense / 2**20:>10.1f} {1.0:>8.2f}x")
  for tile in tiles:
    fn = jax.jit(lambda a, b, t=tile: codebook_argmax(a, b, tile_size=t))
    temp = fn.lower(z, codebook).compile().memory_analysis().temp_size_in_bytes
    print(f"{f'streaming, tile {tile}':<26} {temp / 2**20:>10.1f} {temp / dense:>8.3f}x")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny tower and codebook: a smoke run")
  parser.add_argument("--layers", type=int, default=4, help="SigLIP layers (so400m has 27)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--code-dim", type=int, default=1536)
  parser.add_argument("--codebook-size", type=int, default=65536)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  tower = TINY if args.tiny else SO400M
  if args.tiny:
    args.layers, args.batch, args.code_dim, args.codebook_size, args.repeats = 3, 2, 40, 512, 1
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  reference = TorchTATok(tower, args.layers, args.code_dim, args.codebook_size).eval()
  state = reference.tar_state()
  tar_args = {"input_size": tower["image_size"], "teacher": "bench"}
  config = config_from_tar(tar_args, state, encoder_heads=tower["num_attention_heads"])
  params = jax.tree.map(jnp.asarray, params_from_tar_state(config, state))
  size = tower["image_size"]
  images = np.random.default_rng(0).uniform(0, 1, (args.batch, size, size, 3)).astype(np.float32)
  torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  codebook = tatok.codebook_vectors(config, params)
  with torch.no_grad():
    torch_codebook = reference.codebook()
  print(f"TA-Tok encode: SigLIP {args.layers} layers x {tower['hidden_size']} ({tower['num_attention_heads']} heads, "
        f"patch {tower['patch_size']}, {size} px), {args.codebook_size} codes of width {args.code_dim}, batch "
        f"{args.batch}, fp32; {jax.devices()[0].platform} ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"torch {torch.__version__}")
  print(f"{'scale (codes)':<16} {'planx img/s':>12} {'torch img/s':>12} {'ratio':>7} {'codes equal':>12}")
  for scale in (0, 2):
    run = lambda: tatok.encode(config, params, images, scale, codebook=codebook).block_until_ready()
    planx_s = median_seconds(run, args.repeats)

    def torch_run():
      with torch.no_grad():
        return reference(torch_images, torch_codebook, scale + 1)

    torch_s = median_seconds(torch_run, args.repeats)
    same = float((np.asarray(run()) == torch_run().numpy()).mean())
    label = f"{scale} ({config.codes_per_image(scale)})"
    print(f"{label:<16} {args.batch / planx_s:>12.2f} {args.batch / torch_s:>12.2f} {torch_s / planx_s:>6.2f}x "
          f"{same:>11.1%}")
  memory_table(config.codes_per_image(0), args.codebook_size, args.code_dim,
               (256,) if args.tiny else (4096, 1024))


if __name__ == "__main__":
  main()
