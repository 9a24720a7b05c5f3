"""`planx generate`: prompt (+ optional first frame, + optional keyframe plan) -> umT5 -> Wan DiT -> VAE -> MP4.

Writes `video.mp4`, `contact_sheet.png`, `latents.npy` and `generation.json` into the
output directory. Without component paths it runs the embedded default: tiny random
umT5 / DiT / VAE (every step of the real path, random pixels). Sizes, frame counts and
paths are checked before anything is loaded or compiled.
"""

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from planx_jax import dit, model_checkpoints, t5, vae, video_io
from planx_jax.data import tokenizer as tokenizers

log = logging.getLogger("planx.generate")

DEFAULT_PROMPT = "a red ball rolls to the left across a wooden floor"
DEFAULT_NEGATIVE = "static, blurred details, worst quality, low quality, deformed"
PLANX_META = model_checkpoints.META_FILE


def add_parser(sub) -> None:
  p = sub.add_parser("generate", help="text (+ first frame, + keyframe plan) -> video with umT5, Wan DiT and VAE")
  p.add_argument("--dit", type=Path, help="planx DiT checkpoint or diffusers transformer directory")
  p.add_argument("--vae", type=Path, help="planx VAE checkpoint or diffusers AutoencoderKLWan directory")
  p.add_argument("--text-encoder", type=Path, help="planx t5 checkpoint or transformers UMT5EncoderModel directory")
  p.add_argument("--tokenizer", type=Path, help="umT5 tokenizer directory (default: the text encoder's)")
  p.add_argument("--prompt", default=DEFAULT_PROMPT)
  p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
  p.add_argument("--frames", type=int, default=9, help="video frames, 4k + 1 (Wan2.2: 121)")
  p.add_argument("--height", type=int, default=64, help="pixels, a multiple of VAE stride x DiT patch (32)")
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50; 4 for the embedded default)")
  p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (1 turns it off)")
  p.add_argument("--shift", type=float, default=5.0, help="timestep shift")
  p.add_argument("--solver", choices=["unipc", "euler"], default="unipc")
  p.add_argument("--first-frame", type=Path, help="image (PNG/JPEG) or .npy [H, W, 3] to condition on (TI2V)")
  p.add_argument("--plan", type=Path, help=".npy keyframe codes [F, 81] (TA-Tok scale 2) for the semantic branch")
  p.add_argument("--tatok", type=Path, help="planx TA-Tok checkpoint that turns --plan codes into embeddings")
  p.add_argument("--fps", type=float, default=24.0, help="frame rate of the written MP4 (Wan2.2: 24)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=Path, default=Path("planx_outputs/generate"), help="output directory")
  p.set_defaults(run=run)


def _embedded_default():
  """Tiny random umT5 + DiT + VAE (seed 0) with matching widths, and the built-in tokenizer."""
  tokenizer = tokenizers.build_tiny_tokenizer()
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 3)
  t5_config = t5.T5Config.tiny(vocab_size=len(tokenizer))
  vae_config = vae.VAEConfig.tiny()
  dit_config = dit.DiTConfig.tiny(in_channels=vae_config.z_dim, out_channels=vae_config.z_dim,
                                  text_dim=t5_config.d_model)
  init = lambda module, config, key: jax.jit(lambda k: module.init_params(config, k))(key)  # jit: ~2x faster on CPU
  dit_params = jax.jit(lambda k: dit.init_base_stand_in(dit_config, k))(keys[1])  # its conditions reach the video
  return ((t5_config, init(t5, t5_config, keys[0]), tokenizer), (dit_config, dit_params),
          (vae_config, init(vae, vae_config, keys[2])))


def _is_planx(path: Path) -> bool:
  return (path / PLANX_META).exists()


def _require_dir(path: Path, what: str) -> None:
  if not path.is_dir():
    raise FileNotFoundError(f"{what} {path} does not exist (or is not a directory)")


def _load_text_encoder(path: Path, tokenizer_path: Path | None):
  if _is_planx(path):
    config, params, _ = t5.load_checkpoint(path)
    default_tok = model_checkpoints.tokenizer_dir(path)
  else:
    config, params = t5.load_hf(path)
    default_tok = path if any((path / f).exists() for f in ("tokenizer.json", "spiece.model")) else None
  return config, params, t5.load_tokenizer(tokenizer_path or default_tok)


def _load(args):
  given = [args.dit, args.vae, args.text_encoder]
  if not any(given):
    log.info("no checkpoints given: using the embedded default (tiny random umT5, DiT and VAE, seed 0); the video "
             "is noise shaped by random weights, but every step of the real path runs")
    return _embedded_default()
  if not all(given):
    raise ValueError("pass all of --dit, --vae and --text-encoder (or none for the embedded default)")
  text = _load_text_encoder(args.text_encoder, args.tokenizer)
  dit_config, dit_params = (dit.load_checkpoint(args.dit)[:2] if _is_planx(args.dit) else dit.load_diffusers(args.dit))
  vae_config, vae_params = (vae.load_checkpoint(args.vae)[:2] if _is_planx(args.vae) else vae.load_diffusers(args.vae))
  return text, (dit_config, dit_params), (vae_config, vae_params)


def check_request(args) -> None:
  """Everything that can be checked without loading a model: sizes, counts, paths."""
  if args.frames < 1 or (args.frames - 1) % 4:
    raise ValueError(f"--frames must be 4k + 1 (1, 5, 9, ..., 121), got {args.frames}")
  for name in ("height", "width"):
    value = getattr(args, name)
    if value < 32 or value % 32:
      raise ValueError(f"--{name} must be a positive multiple of 32 (VAE stride 16 x DiT patch 2), got {value}")
  if args.steps is not None and args.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  if args.fps <= 0:
    raise ValueError(f"--fps must be positive, got {args.fps}")
  for flag, what in (("dit", "DiT checkpoint"), ("vae", "VAE checkpoint"), ("text_encoder", "text encoder checkpoint"),
                     ("tokenizer", "tokenizer directory"), ("tatok", "TA-Tok checkpoint")):
    if getattr(args, flag) is not None:
      _require_dir(getattr(args, flag), what)
  for flag in ("first_frame", "plan"):
    path = getattr(args, flag)
    if path is not None and not path.is_file():
      raise FileNotFoundError(f"--{flag.replace('_', '-')} {path} does not exist")
  if (args.plan is None) != (args.tatok is None):
    raise ValueError("--plan and --tatok go together: the codes need TA-Tok's codebook to become embeddings")


def check_components(t5_config, dit_config, vae_config, args) -> tuple[int, int, int]:
  """Widths and strides agree; returns the latent grid (frames, height, width)."""
  if dit_config.in_channels != vae_config.z_dim or dit_config.out_channels != vae_config.z_dim:
    raise ValueError(f"the DiT takes {dit_config.in_channels} latent channels but the VAE has z_dim {vae_config.z_dim}")
  if dit_config.text_dim != t5_config.d_model:
    raise ValueError(f"the DiT reads {dit_config.text_dim}-wide text states but the text encoder is "
                     f"{t5_config.d_model} wide")
  st, ss = vae_config.scale_factor_temporal, vae_config.scale_factor_spatial
  _, ph, pw = dit_config.patch_size
  if (args.frames - 1) % st or args.height % (ss * ph) or args.width % (ss * pw):
    raise ValueError(f"{args.frames} frames of {args.height}x{args.width} do not fit VAE strides ({st}, {ss}) and "
                     f"DiT patch {dit_config.patch_size}")
  return 1 + (args.frames - 1) // st, args.height // ss, args.width // ss


def _first_frame(path: Path, height: int, width: int) -> np.ndarray:
  """[1, 1, H, W, 3] in [-1, 1] from an image file or .npy (uint8 or [0, 1] floats)."""
  if path.suffix == ".npy":
    image = np.load(path)
  else:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
  if image.shape != (height, width, 3):
    raise ValueError(f"first frame {path} is {image.shape}, expected ({height}, {width}, 3)")
  image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
  if image.min() < 0 or image.max() > 1:
    raise ValueError(f"first frame {path} values must be uint8 or floats in [0, 1]")
  return (image * 2.0 - 1.0)[None, None]


def _semantic(args, dit_config, latent_grid) -> dict:
  if args.plan is None:
    return {}
  from planx_jax import tatok

  if dit_config.semantic_in_dim is None:
    raise ValueError("--plan needs a DiT with the Plan-X semantic branch (convert with --semantic-in-dim)")
  tatok_config, tatok_params, _ = tatok.load_checkpoint(args.tatok)
  codes = np.load(args.plan)
  codes = codes.reshape(codes.shape[0], -1)  # [F, 81]
  embeddings = tatok.decode_embeddings(tatok_config, tatok_params, codes).reshape(1, -1, tatok_config.code_dim)
  if embeddings.shape[-1] != dit_config.semantic_in_dim:
    raise ValueError(f"TA-Tok codes are {embeddings.shape[-1]} wide, the DiT's semantic branch takes "
                     f"{dit_config.semantic_in_dim}")
  _, ph, pw = dit_config.patch_size
  grid = (latent_grid[0], latent_grid[1] // ph, latent_grid[2] // pw)
  positions = dit.semantic_positions(grid, keyframes=codes.shape[0], video_fps=args.fps)
  return dict(semantic=embeddings, semantic_positions=dit.batch_positions(positions, 1))


def run(args) -> int:
  start = time.time()
  check_request(args)
  (t5_config, t5_params, tokenizer), (dit_config, dit_params), (vae_config, vae_params) = _load(args)
  latent_grid = check_components(t5_config, dit_config, vae_config, args)
  steps = args.steps or (4 if args.dit is None else 50)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  text_emb, _ = t5.encode_prompts(t5_config, t5_params, tokenizer, [args.prompt])
  negative = None
  if args.guidance != 1.0:
    negative, _ = t5.encode_prompts(t5_config, t5_params, tokenizer, [args.negative_prompt])
  semantic = _semantic(args, dit_config, latent_grid)
  noise = jax.random.normal(jax.random.key(args.seed), (1, *latent_grid, vae_config.z_dim), jnp.float32)
  fixed = None
  if args.first_frame is not None:
    first = vae.encode(vae_config, vae_params, _first_frame(args.first_frame, args.height, args.width))  # [1, 1, ...]
    fixed = jnp.zeros_like(noise).at[:, :1].set(first)
  log.info("sampling %d latent frames of %dx%d (%s, %d steps, guidance %.1f)%s%s", *latent_grid, args.solver, steps,
           args.guidance, ", first frame fixed" if fixed is not None else "",
           f", {semantic['semantic'].shape[1]} semantic tokens" if semantic else "")

  bar = tqdm(total=steps, desc="denoising", unit="step")
  sample = jax.jit(lambda p, n, c, u, s, f: dit.sample_latents(
      dit_config, p, n, c, u, num_steps=steps, shift=args.shift, guidance_scale=args.guidance, solver=args.solver,
      fixed_latents=f, callback=lambda i, total: bar.update(1), **s))
  latents = sample(dit_params, noise, text_emb, negative, semantic, fixed).block_until_ready()
  bar.close()
  video = np.asarray(vae.decode(vae_config, vae_params, latents))[0]  # [T, H, W, 3] in [-1, 1]

  video_path = video_io.write_mp4(out / "video.mp4", video, args.fps)
  sheet_path = video_io.write_png(out / "contact_sheet.png", video_io.contact_sheet(video))
  np.save(out / "latents.npy", np.asarray(latents))
  meta = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "frames": args.frames,
          "height": args.height, "width": args.width, "steps": steps, "guidance": args.guidance, "shift": args.shift,
          "solver": args.solver, "seed": args.seed, "fps": args.fps, "embedded_default": args.dit is None,
          "first_frame": None if args.first_frame is None else str(args.first_frame),
          "plan": None if args.plan is None else str(args.plan), "seconds": round(time.time() - start, 2)}
  (out / "generation.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"wrote {video_path} ({video.shape[0]} frames, {args.width}x{args.height}) and {sheet_path}")
  return 0
