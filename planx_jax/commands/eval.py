"""`planx eval DIR`: judge a directory of generated videos (`<name>.mp4` + its `<name>.json` episode) of the world.

Prints a per-video table and the mean accuracy / completeness / fidelity / consistency, optionally writes them as
JSON. The metrics are defined in `planx_jax.world.judge`; this module only parses arguments and prints.
"""

import json
import logging
from pathlib import Path

from planx_jax.world import judge

log = logging.getLogger("planx.eval")


def add_parser(sub) -> None:
  p = sub.add_parser("eval", help="score generated videos of the synthetic world (Plan-X's four metrics)")
  p.add_argument("directory", type=Path,
                 help="directory of <name>.mp4 videos, each with its episode <name>.json (world.scenes.Episode.to_json())")
  p.add_argument("--out", type=Path, help="write the per-video scores and the means to this JSON file (keep it "
                                          "outside DIR: every .json in DIR is read as an episode)")
  p.set_defaults(run=run)


def format_table(scores: dict) -> str:
  """One line per video and a final mean line; columns are the four metrics, then the video prompt."""
  width = max([len("mean")] + [len(name) for name in scores["videos"]])
  header = f"{'video':<{width}}  " + "  ".join(f"{m:>12}" for m in judge.METRICS) + "  prompt"
  lines = [header]
  for name, s in scores["videos"].items():
    lines.append(f"{name:<{width}}  " + "  ".join(f"{s[m]:12.3f}" for m in judge.METRICS) + f"  {s['prompt']}")
  lines.append(f"{'mean':<{width}}  " + "  ".join(f"{scores['mean'][m]:12.3f}" for m in judge.METRICS)
               + f"  ({scores['count']} videos)")
  return "\n".join(lines)


def run(args) -> int:
  if args.out is not None and args.out.suffix == ".json" and args.out.resolve().parent == args.directory.resolve():
    raise ValueError(f"--out {args.out} is inside {args.directory}, where every .json is read as an episode; "
                     "write it elsewhere")
  scores = judge.score_directory(args.directory)
  print(format_table(scores))
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(scores, indent=2))
    log.info("wrote scores of %d videos to %s", scores["count"], args.out)
  return 0
