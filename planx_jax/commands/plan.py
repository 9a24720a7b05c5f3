"""`planx plan`: sample keyframe plans from a planner checkpoint and a prompt; print/write the code grids.

Without a checkpoint it runs the embedded default, a tiny randomly initialised
planner with a built-in tokenizer: it exercises the whole path, not a trained model.
"""

import argparse
import logging
import time
from pathlib import Path

import jax
import numpy as np

from planx_jax import planner
from planx_jax.data import tokenizer as tokenizers
from planx_jax.data.conversation import FIRST_FRAME_CODES, PLAN_FRAME_CODES, build_plan_conversation
from planx_jax.model_checkpoints import tokenizer_dir
from planx_jax.plan_tokens import PlanTokens
from planx_jax.sampling import KEYFRAME_LEN, PlanGrammar, SamplingConfig, sample_plans

log = logging.getLogger("planx.plan")

EMBEDDED_CODEBOOK_SIZE = 65536
DEFAULT_IMAGE_DESCRIPTION = "a red ball on a wooden floor next to a blue box"
DEFAULT_VIDEO_PROMPT = "the ball rolls slowly to the left, then stops in front of the box"
GRID = int(round(PLAN_FRAME_CODES**0.5))  # 9


def add_parser(sub) -> None:
  p = sub.add_parser("plan", help="sample keyframe plans (TA-Tok code grids) from a planner")
  p.add_argument("checkpoint", nargs="?", type=Path,
                 help="planx planner checkpoint (from `planx convert planner-from-hf`); default: the embedded "
                      "tiny random planner")
  p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the checkpoint's)")
  p.add_argument("--image-description", default=DEFAULT_IMAGE_DESCRIPTION, help="T_img: the static scene")
  p.add_argument("--video-prompt", default=DEFAULT_VIDEO_PROMPT, help="T_motion: what should happen")
  p.add_argument("--frames", type=int, default=4, help="F: keyframes at 2 FPS including the first (default 4)")
  p.add_argument("--first-frame-codes", type=Path,
                 help=".npy of the first frame's 729 TA-Tok scale-0 codes (I2V); default T2V (zeroed)")
  p.add_argument("--continue-from", type=Path,
                 help=".npy of k planned keyframes [k, 81] or [k, 9, 9] to continue (video continuation)")
  p.add_argument("--num-samples", type=int, default=1)
  p.add_argument("--temperature", type=float, default=0.9, help="Plan-X samples at 0.9")
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=Path, help="write the codes [num_samples, F-1, 9, 9] to this .npy file")
  p.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=None,
                 help="decode with nn.scan-stacked layers (default: unrolled on CPU, where XLA copies scanned "
                      "weights every step; the checkpoint's layout elsewhere)")
  p.set_defaults(run=run)


def embedded_default(scan_layers: bool = True):
  """Tiny random planner + built-in tokenizer with the full 65536-code Plan-X vocabulary (seed 0)."""
  tokenizer = tokenizers.build_tiny_tokenizer(plan_tokens_codebook_size=EMBEDDED_CODEBOOK_SIZE)
  layout = tokenizers.plan_tokens_from_tokenizer(tokenizer)
  config = planner.PlannerConfig.tiny(vocab_size=layout.vocab_size, tie_word_embeddings=False,
                                      scan_layers=scan_layers)
  params = jax.jit(lambda rng: planner.init_params(config, rng))(jax.random.key(0))
  return config, params, layout, tokenizer


def _scan_layers(requested: bool | None) -> dict:
  """Layer layout override for decoding: as requested, else unrolled on CPU (logged)."""
  if requested is not None:
    return {"scan_layers": requested}
  if jax.default_backend() == "cpu":
    log.info("CPU backend: decoding with unrolled layers (scan_layers=False; --scan-layers to keep the stack)")
    return {"scan_layers": False}
  return {}


def _load(args):
  if args.checkpoint is None:
    log.info("no checkpoint given: using the embedded default (tiny planner, random weights, seed 0); its plans "
             "are random codes")
    return embedded_default(**_scan_layers(args.scan_layers))
  config, params, meta = planner.load_checkpoint(args.checkpoint, **_scan_layers(args.scan_layers))
  layout = meta["plan_tokens"]
  source = args.tokenizer or tokenizer_dir(args.checkpoint)
  if source is None:
    raise FileNotFoundError(f"checkpoint {args.checkpoint} has no tokenizer; pass --tokenizer DIR")
  tokenizer = tokenizers.load_tokenizer(source)
  if layout is None:
    raise ValueError(f"checkpoint {args.checkpoint} has no Plan-X tokens; convert it with --extend-vocab")
  return config, params, layout, tokenizer


def _load_codes(path: Path, shape_name: str, size: int) -> np.ndarray:
  if not path.exists():
    raise FileNotFoundError(f"{shape_name} file {path} does not exist")
  codes = np.load(path, allow_pickle=False)
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"{shape_name} in {path} must be integer codes, got {codes.dtype}")
  return codes.reshape(-1, size) if codes.size % size == 0 else codes


def _prefix_tokens(codes: np.ndarray, layout: PlanTokens, grammar: PlanGrammar) -> np.ndarray:
  """Plan tokens of k given keyframes codes [k, 81] (the start of a plan)."""
  if codes.ndim != 2 or codes.shape[1] != PLAN_FRAME_CODES:
    raise ValueError(f"--continue-from codes must have shape [k, 81] or [k, 9, 9], got {list(codes.shape)}")
  if codes.shape[0] >= grammar.num_keyframes:
    raise ValueError(f"--continue-from has {codes.shape[0]} keyframes; --frames {grammar.num_frames} plans only "
                     f"{grammar.num_keyframes}: nothing left to continue")
  template = np.array(grammar.template()[: codes.shape[0] * KEYFRAME_LEN]).reshape(-1, KEYFRAME_LEN)
  template[:, 2:2 + PLAN_FRAME_CODES] = layout.code_to_id(codes)
  return template.reshape(-1)


def format_grid(codes: np.ndarray) -> str:
  """[81] codes -> 9 lines of 9 right-aligned numbers."""
  grid = np.asarray(codes).reshape(GRID, GRID)
  return "\n".join(" ".join(f"{int(c):5d}" for c in row) for row in grid)


def run(args) -> int:
  if args.num_samples < 1:
    raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  grammar = PlanGrammar(PlanTokens(), args.frames)  # validates F before any loading
  config, params, layout, tokenizer = _load(args)
  grammar = PlanGrammar(layout, args.frames)
  first = None
  if args.first_frame_codes is not None:
    first = _load_codes(args.first_frame_codes, "--first-frame-codes", FIRST_FRAME_CODES).reshape(-1)
  conversation = build_plan_conversation(tokenizer, layout, args.image_description, args.video_prompt, args.frames,
                                         first_frame_codes=first)
  prefix = None
  if args.continue_from is not None:
    prefix = _prefix_tokens(_load_codes(args.continue_from, "--continue-from", PLAN_FRAME_CODES), layout, grammar)
  zero = None if conversation.has_first_frame else [conversation.first_frame_mask] * args.num_samples
  log.info("sampling %d plan(s) of %d keyframes (%s, prompt %d tokens, %s)", args.num_samples,
           grammar.num_keyframes, "I2V" if first is not None else "T2V", len(conversation),
           f"temperature {args.temperature}")
  start = time.time()
  samples = sample_plans(config, params, layout, [conversation.token_ids] * args.num_samples, args.frames,
                         jax.random.key(args.seed), sampling, prefix=prefix, zero_embed_masks=zero)
  codes = np.asarray(samples.codes).reshape(args.num_samples, grammar.num_keyframes, GRID, GRID)
  log.info("sampled in %.1fs (compile included)", time.time() - start)
  for s in range(args.num_samples):
    for k in range(grammar.num_keyframes):
      print(f"sample {s} keyframe {k + 1} (t = {(k + 1) / 2:.1f} s):")
      print(format_grid(codes[s, k]))
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, codes)
    log.info("wrote codes %s to %s", list(codes.shape), args.out)
  return 0


