"""The `planx` command: one entry point, one subcommand per job.

Each subcommand lives in `planx_jax.commands.<name>` with `add_parser` and `run`;
this module only wires them up and turns expected errors into one-line messages.
"""

import argparse
import logging
import sys

from planx_jax.commands import compile as compile_command
from planx_jax.commands import convert, demo, generate, plan, train
from planx_jax.commands import eval as eval_command
from planx_jax.parallel.platforms import skip_absent_tpu

SUBCOMMANDS = {"compile": compile_command, "convert": convert, "demo": demo, "eval": eval_command, "generate": generate,
               "plan": plan, "train": train}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="planx", description="Plan-X in JAX: semantic planner + video DiT.")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, module in SUBCOMMANDS.items():
    module.add_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  # `--config.key=value` overrides of an experiment config (big_vision style) for the commands that take one.
  overrides = [item for item in extra if item.startswith("--config.")]
  unknown = [item for item in extra if not item.startswith("--config.")]
  if unknown or (overrides and not getattr(args, "accepts_config_overrides", False)):
    parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
  args.config_overrides = overrides
  level = logging.DEBUG if args.verbose else logging.INFO
  logging.basicConfig(level=level, format="%(message)s")
  # An imported library may have configured the root logger first (then basicConfig does nothing): the
  # project's own loggers still report progress at INFO.
  for name in ("planx", "planx_jax"):
    logging.getLogger(name).setLevel(level)
  if not args.verbose:
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines
  skip_absent_tpu()  # before any command starts a JAX backend
  try:
    return args.run(args) or 0
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    if args.verbose:
      raise
    print(f"planx {args.command}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
