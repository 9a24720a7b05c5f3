"""The `planx` command: one entry point, one subcommand per job.

Each subcommand lives in `planx_jax.commands.<name>` with `add_parser` and `run`;
this module only wires them up and turns expected errors into one-line messages.
"""

import argparse
import logging
import sys

from planx_jax.commands import compile as compile_command
from planx_jax.commands import convert, generate, plan, train

SUBCOMMANDS = {"compile": compile_command, "convert": convert, "generate": generate, "plan": plan, "train": train}


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
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
  if not args.verbose:
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines
  try:
    return args.run(args) or 0
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    if args.verbose:
      raise
    print(f"planx {args.command}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
