"""`planx compile`: AOT-compile a Plan-X train step for a TPU topology on this host (libtpu; no TPU, nothing
allocated) and print what one chip needs: memory vs its HBM, FLOPs, collectives and a roofline step-time / MFU
estimate. `--sweep` compiles the config under several mesh layouts: each report, then one comparison table.
"""

import argparse
import json
import logging
import os
from pathlib import Path

import jax
import ml_collections

from planx_jax.parallel.mesh import MESH_AXES

log = logging.getLogger("planx.compile")

MODEL_SECTIONS = ("planner", "dit")


def add_parser(sub) -> None:
  p = sub.add_parser("compile", help="AOT-compile a train step for a TPU topology: per-chip memory, FLOPs, "
                                     "collectives and a step-time / MFU estimate (no TPU needed)")
  p.add_argument("--config", required=True,
                 help="experiment config file[:arg], e.g. configs/planner_sft.py:7b; override fields with "
                      "--config.key=value")
  p.add_argument("--topology", required=True, help="TPU topology: v5p:4x4x4, v6e:4x4, v5e:16x16, v4:2x2x2, ...")
  p.add_argument("--sweep", action="append", metavar="LAYOUTS",
                 help="mesh layouts to compare, ';'-separated, axes left out are 1: "
                      "\"data=-1;fsdp=-1;fsdp=8,tensor=4\" (repeatable)")
  p.add_argument("--json", type=Path, help="also write the report(s) to this JSON file")
  p.set_defaults(run=run, accepts_config_overrides=True)


def compile_only_environment() -> None:
  """Before libtpu starts: no TPU-host probing (any valid accelerator type), other libtpu users tolerated, and a
  CPU backend for this process (the compiles target the topology's devices, not local ones)."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")


def use_pallas_attention(config: ml_collections.ConfigDict) -> list[str]:
  """Sets attention_impl="pallas" in every model section whose overrides do not name one (on a CPU host "auto"
  would pick XLA attention, which is not what a TPU runs); returns the sections changed."""
  changed = []
  for name in MODEL_SECTIONS:
    if name in config and "attention_impl" not in config[name].overrides:
      with config[name].overrides.unlocked():
        config[name].overrides["attention_impl"] = "pallas"
      changed.append(name)
  return changed


def with_layout(config: ml_collections.ConfigDict, layout: dict[str, int]) -> ml_collections.ConfigDict:
  """A copy of `config` whose mesh is exactly `layout` (axes left out are 1)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.mesh = ml_collections.ConfigDict({**{axis: 1 for axis in MESH_AXES}, **layout})
  return copy


def compile_step(config: ml_collections.ConfigDict, devices, topology: str):
  """Builds the experiment on the topology's devices, lowers and compiles its train step, and reports it."""
  import planx_jax.rl  # noqa: F401  (registers the RL batch source in train.registry)
  from planx_jax.aot import compile_report as cr
  from planx_jax.train.experiment import build_experiment

  exp = build_experiment(config, devices=devices)
  mesh = ",".join(f"{axis}={size}" for axis, size in exp.mesh.shape.items())
  return cr.compile_report(exp.lower_train_step(), num_devices=len(devices), chip=cr.chip_for(devices),
                           model_flops_per_step=exp.model_flops_per_step(),
                           label=f"{config.stage} on {topology}, mesh {mesh}")


def run(args: argparse.Namespace) -> int:
  compile_only_environment()
  from planx_jax.aot import compile_report as cr
  from planx_jax.train.config_files import load_config

  layouts = [layout for text in args.sweep or () for layout in cr.parse_layouts(text)]
  config = load_config(args.config, args.config_overrides)
  devices = cr.topology_devices(args.topology)
  changed = use_pallas_attention(config)
  if changed:
    log.info("attention: the Pallas TPU kernel for %s (set --config.<model>.overrides.attention_impl to change)",
             ", ".join(changed))
  header = {"config": args.config, "overrides": list(args.config_overrides), "topology": args.topology,
            "stage": config.stage, "chip": cr.chip_for(devices).name, "num_devices": len(devices)}
  if layouts:
    def build(layout):
      report = compile_step(with_layout(config, layout), devices, args.topology)
      print(cr.format_report(report), end="\n\n", flush=True)
      return report

    rows = cr.sweep(build, layouts)
    print(f"== planx compile --sweep: {config.stage} ({args.config}) on {args.topology}, {len(devices)} x TPU "
          f"{header['chip']} ==")
    print(cr.format_sweep(rows))
    result = {**header, "sweep": [{"layout": row.layout, "error": row.error,
                                   "report": row.report.to_dict() if row.report else None} for row in rows]}
  else:
    report = compile_step(config, devices, args.topology)
    print(cr.format_report(report))
    result = {**header, "report": report.to_dict()}
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"planx compile: wrote {args.json}")
  return 0
