"""`planx convert`: checkpoint conversion between reference formats and planx checkpoints.

planner-from-hf / planner-to-hf: transformers Qwen2 <-> planx planner (with the
Plan-X vocabulary); dit-from-diffusers / dit-to-diffusers: diffusers Wan transformer
<-> planx DiT (with the semantic branch); tatok-from-tar / tatok-to-tar: Tar's
`ta_tok.pth` <-> planx TA-Tok. Conversion logic lives in
`planx_jax.convert`; this module parses arguments and reports progress.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from planx_jax import dit, planner, tatok
from planx_jax.data import tokenizer as tokenizers
from planx_jax.model_checkpoints import tokenizer_dir
from planx_jax.plan_tokens import PlanTokens

log = logging.getLogger("planx.convert")

# config.json keys carried from the source into a re-export.
_CARRIED_HF_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def parse_size(text: str) -> int:
  """'5GB', '500MB', '1024' -> bytes."""
  units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
  upper = text.strip().upper()
  for unit, scale in units.items():
    if upper.endswith(unit):
      number = upper[: -len(unit)]
      break
  else:
    number, scale = upper, 1
  try:
    value = int(float(number) * scale)
  except ValueError:
    raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or a byte count") from None
  if value < 1:
    raise ValueError(f"size must be positive, got {text!r}")
  return value


def add_parser(sub) -> None:
  parser = sub.add_parser("convert", help="convert checkpoints to and from planx format")
  kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

  p = kinds.add_parser("planner-from-hf", help="transformers Qwen2ForCausalLM directory -> planx planner checkpoint")
  p.add_argument("src", type=Path, help="HF directory: config.json + *.safetensors (+ tokenizer files)")
  p.add_argument("dst", type=Path, help="planx checkpoint directory to create")
  p.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: SRC if it has one)")
  p.add_argument("--extend-vocab", action=argparse.BooleanOptionalAction, default=True,
                 help="add Plan-X tokens <im_start>, <im_end>, <S0..2>, <I0..> if absent (default: on)")
  p.add_argument("--codebook-size", type=int, default=65536, help="number of <I*> code tokens (TA-Tok: 65536)")
  p.add_argument("--codebook", type=Path,
                 help=".npy [codebook_size, hidden] vectors to initialise the code rows (widths must match)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_planner_from_hf)

  p = kinds.add_parser("planner-to-hf", help="planx planner checkpoint -> transformers Qwen2ForCausalLM directory")
  p.add_argument("src", type=Path, help="planx planner checkpoint directory")
  p.add_argument("dst", type=Path, help="HF directory to create")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="tensor dtype (default: as stored)")
  p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size (default 5GB)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_planner_to_hf)

  p = kinds.add_parser("dit-from-diffusers", help="diffusers WanTransformer3DModel directory -> planx DiT checkpoint")
  p.add_argument("src", type=Path, help="diffusers transformer directory: config.json + diffusion_pytorch_model*")
  p.add_argument("dst", type=Path, help="planx checkpoint directory to create")
  p.add_argument("--semantic-in-dim", type=int,
                 help="add a fresh Plan-X semantic branch for semantic embeddings of this width (the TA-Tok "
                      "code width in stage 1, the planner's hidden size end to end)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_dit_from_diffusers)

  p = kinds.add_parser("dit-to-diffusers", help="planx DiT checkpoint -> diffusers directory (+ semantic branch file)")
  p.add_argument("src", type=Path, help="planx DiT checkpoint directory")
  p.add_argument("dst", type=Path, help="diffusers directory to create")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="tensor dtype (default: as stored)")
  p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size (default 5GB)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_dit_to_diffusers)

  p = kinds.add_parser("tatok-from-tar", help="Tar ta_tok.pth (or a tatok-to-tar directory) -> planx TA-Tok checkpoint")
  p.add_argument("src", type=Path, help="ta_tok.pth (read with torch.load(weights_only=True))")
  p.add_argument("dst", type=Path, help="planx checkpoint directory to create")
  p.add_argument("--encoder-heads", type=int,
                 help="attention heads of the SigLIP encoder when the teacher is not a known preset")
  p.add_argument("--codebook-out", type=Path,
                 help="also write the normalised codebook [K, D] as .npy (for `planner-from-hf --codebook`)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_tatok_from_tar)

  p = kinds.add_parser("tatok-to-tar", help="planx TA-Tok checkpoint -> Tar format (.pth file, or a directory)")
  p.add_argument("src", type=Path, help="planx TA-Tok checkpoint directory")
  p.add_argument("dst", type=Path, help="DST.pth: a file Tar's TextAlignedTokenizer.from_checkpoint loads; "
                 "otherwise a directory of ta_tok.safetensors + args.json")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(run=run_tatok_to_tar)


def _has_tokenizer(path: Path) -> bool:
  return (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()


def run_planner_from_hf(args) -> int:
  start = time.time()
  log.info("reading %s", args.src)
  config, params = planner.load_hf(args.src)
  hf_config = json.loads((args.src / "config.json").read_text())
  tokenizer_path = args.tokenizer or (args.src if _has_tokenizer(args.src) else None)
  tokenizer = None if tokenizer_path is None else tokenizers.load_tokenizer(tokenizer_path)
  layout = _plan_layout(tokenizer, args)
  if layout is not None and config.vocab_size < layout.vocab_size:
    if not args.extend_vocab:
      raise ValueError(f"the tokenizer has Plan-X tokens up to id {layout.vocab_size - 1} but the model has "
                       f"{config.vocab_size} rows; drop --no-extend-vocab")
    codebook = None if args.codebook is None else np.load(args.codebook)
    log.info("extending the vocabulary %d -> %d rows (%s)", config.vocab_size, layout.vocab_size,
             "code rows from the codebook" if codebook is not None else "new rows = mean of text rows")
    config, params = planner.extend_vocab(config, params, layout, codebook=codebook)
  if tokenizer is None:
    log.info("no tokenizer found next to %s: `planx plan` on this checkpoint will need --tokenizer", args.src)
  extras = {"source": str(args.src.absolute()), "hf_config": hf_config}
  planner.save_checkpoint(args.dst, config, params, plan_tokens=layout, tokenizer=tokenizer, extras=extras,
                          overwrite=args.overwrite)
  count = planner.param_count(config)
  log.info("wrote %s: %s params, vocab %d (%.1fs)", args.dst, f"{count:,}", config.vocab_size, time.time() - start)
  return 0


def _plan_layout(tokenizer, args) -> PlanTokens | None:
  """The Plan-X token layout for this conversion (adding the tokens to `tokenizer` when asked)."""
  if tokenizer is None:
    return PlanTokens(codebook_size=args.codebook_size) if args.extend_vocab else None
  if tokenizer.convert_tokens_to_ids("<im_start>") not in (None, tokenizer.unk_token_id):
    return tokenizers.plan_tokens_from_tokenizer(tokenizer)
  if not args.extend_vocab:
    return None
  return tokenizers.add_plan_tokens(tokenizer, args.codebook_size)


def run_planner_to_hf(args) -> int:
  start = time.time()
  config, params, meta = planner.load_checkpoint(args.src)
  carried = {k: meta.get("hf_config", {})[k] for k in _CARRIED_HF_KEYS if k in meta.get("hf_config", {})}
  planner.save_hf(config, params, args.dst, dtype=args.dtype, max_shard_bytes=parse_size(args.max_shard_size),
                  extra_config=carried, tokenizer=tokenizer_dir(args.src), overwrite=args.overwrite)
  log.info("wrote %s (Qwen2ForCausalLM, vocab %d, %.1fs)", args.dst, config.vocab_size, time.time() - start)
  return 0


def run_dit_from_diffusers(args) -> int:
  start = time.time()
  log.info("reading %s", args.src)
  config, params = dit.load_diffusers(args.src)
  if args.semantic_in_dim is not None:
    log.info("adding the semantic branch (k_sem/v_sem/norm_k_sem copied from the text branch, input width %d)",
             args.semantic_in_dim)
    config, params = dit.add_semantic_branch(config, params, args.semantic_in_dim)
  dit.save_checkpoint(args.dst, config, params, extras={"source": str(args.src.absolute())},
                      overwrite=args.overwrite)
  log.info("wrote %s: %s params (%.1fs)", args.dst, f"{dit.param_count(config):,}", time.time() - start)
  return 0


def run_dit_to_diffusers(args) -> int:
  start = time.time()
  config, params, _ = dit.load_checkpoint(args.src)
  dit.save_diffusers(config, params, args.dst, dtype=args.dtype, max_shard_bytes=parse_size(args.max_shard_size),
                     overwrite=args.overwrite)
  branch = "" if config.semantic_in_dim is None else " + semantic_branch.safetensors"
  log.info("wrote %s (WanTransformer3DModel%s, %.1fs)", args.dst, branch, time.time() - start)
  return 0


def run_tatok_from_tar(args) -> int:
  start = time.time()
  log.info("reading %s", args.src)
  config, params = tatok.load_tar(args.src, encoder_heads=args.encoder_heads)
  log.info("TA-Tok: %d-layer encoder (width %d), %d codes of width %d, decoder %s", config.encoder.num_layers,
           config.hidden_size, config.codebook_size, config.code_dim,
           "absent" if config.decoder is None else f"{config.decoder.num_layers} layers")
  tatok.save_checkpoint(args.dst, config, params, extras={"source": str(args.src.absolute())},
                        overwrite=args.overwrite)
  if args.codebook_out is not None:
    np.save(args.codebook_out, np.asarray(tatok.codebook_vectors(config, params)))
    log.info("wrote the codebook to %s", args.codebook_out)
  log.info("wrote %s (%.1fs)", args.dst, time.time() - start)
  return 0


def run_tatok_to_tar(args) -> int:
  start = time.time()
  config, params, _ = tatok.load_checkpoint(args.src)
  tatok.save_tar(config, params, args.dst, overwrite=args.overwrite)
  log.info("wrote %s (%.1fs)", args.dst, time.time() - start)
  return 0
