"""AOT compile reports for TPU topologies, from any host: per-device memory vs HBM, FLOPs, collectives, roofline.

TPU chips and topology devices (libtpu), a `CompileReport` of one compiled step, its table, and a sweep of one
step over several mesh layouts. Not the train step or the mesh (see `planx_jax.train.experiment`, `mesh.py`).
"""

import dataclasses
import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax

from planx_jax.aot.hlo_stats import COLLECTIVES, Collective, CollectiveSite, hlo_stats

log = logging.getLogger(__name__)

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip (= one JAX device: v4 and v5p run in megacore mode) and its public peak numbers."""
  name: str
  hbm_bytes: int
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s one chip sends over all its ICI links at once (one direction)


# Public numbers per chip, from the Google Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, v5e,
# v5p, v6e): v4 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, ICI 6 links x 400 Gbps per direction (TPU v4 paper,
# Jouppi et al., ISCA 2023); v5e 197 TFLOP/s, 16 GiB at 819 GB/s, ICI 1600 Gbps; v5p 459 TFLOP/s, 95 GiB at
# 2765 GB/s, ICI 4800 Gbps (1200 GB/s both directions); v6e 918 TFLOP/s, 32 GiB at 1640 GB/s, ICI 3584 Gbps.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 300e9),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 200e9),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 600e9),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, 448e9),
}
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
TOPOLOGY_FORMS = ("v5e:AxB or v6e:AxB (2D torus, e.g. v5e:2x2, v5e:16x16, v6e:4x4), v4:AxBxC or v5p:AxBxC "
                  "(3D, e.g. v5p:2x2x1, v5p:4x4x4); the shape must tile libtpu's 2x2-chip hosts (1x1 also works), "
                  "at most 16384 chips")
_TOPOLOGY = re.compile(r"(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?")
MAX_CHIPS = 16384


def topology_devices(name: str) -> list[jax.Device]:
  """Compile-only devices of a TPU topology such as "v5p:4x4x4" (libtpu; no TPU needed).

  Raises ValueError listing the accepted forms for a name libtpu does not take (checked here first: libtpu
  crashes the process on a zero dimension).
  """
  match = _TOPOLOGY.fullmatch(name.strip()) if isinstance(name, str) else None
  dims = [int(d) for d in match.groups()[1:] if d is not None] if match else []
  if not match or (match.group(1) in ("v4", "v5p")) != (len(dims) == 3) or min(dims) < 1 or \
      math.prod(dims) > MAX_CHIPS:
    raise ValueError(f"unknown TPU topology {name!r}; accepted forms: {TOPOLOGY_FORMS}")
  from jax.experimental import topologies

  options = {"chip_config_name": "megacore"} if match.group(1) == "v4" else {}
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name.strip(), **options).devices)
  except RuntimeError as err:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise ValueError(f"libtpu rejects TPU topology {name!r} ({first}); accepted forms: {TOPOLOGY_FORMS}") from err


def chip_for(devices: Sequence[jax.Device]) -> Chip:
  """The chip row for TPU devices (their device_kind); per-core numbers where a chip shows as several devices."""
  kinds = sorted({d.device_kind for d in devices})
  if len(kinds) != 1 or kinds[0] not in DEVICE_KINDS:
    raise ValueError(f"no chip numbers for device kinds {kinds}; known: {sorted(DEVICE_KINDS)}")
  chip = CHIPS[DEVICE_KINDS[kinds[0]]]
  chips = len({tuple(getattr(d, "coords", (d.id,))) for d in devices})
  cores = len(devices) // max(chips, 1)
  if cores <= 1:
    return chip
  return Chip(f"{chip.name} (1/{cores} chip)", chip.hbm_bytes // cores, chip.peak_flops / cores,
              chip.hbm_bandwidth / cores, chip.ici_bandwidth / cores)


@dataclasses.dataclass(frozen=True)
class Memory:
  """Per-device HBM bytes from `memory_analysis()`. total = arguments + outputs - aliased + temps + generated code
  (donated arguments alias outputs and count once)."""
  arguments: int
  outputs: int
  aliased: int
  temps: int
  generated_code: int
  host: int  # host-offloaded arguments + outputs + temps
  total: int


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Roofline step time (seconds) per device; an estimate from peak numbers, not a measurement.

  step = max(compute, memory) + collectives: compute = FLOPs / peak, memory = bytes accessed / HBM bandwidth,
  collectives = ring ICI bytes / ICI bandwidth, not overlapped with compute. mfu = model FLOPs / (devices x peak x
  step).
  """
  compute_s: float
  memory_s: float
  collective_s: float
  step_s: float
  bound: str  # "compute" | "memory" | "collectives": the largest term
  mfu: float | None


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """What one compiled step needs per device on `num_devices` chips of `chip`.

  fits: required_bytes <= available_bytes (the chip's HBM; or, when the compiler ran out of HBM, its own numbers,
  in `error`). xla_flops / xla_bytes: cost_analysis(), which counts a loop body once; flops / bytes_accessed add
  the remaining loop iterations (`hlo_stats`). collectives: kind -> Collective. notes: caveats of this report.
  """
  chip: Chip
  num_devices: int
  fits: bool
  required_bytes: float | None
  available_bytes: float | None
  memory: Memory | None = None
  xla_flops: float | None = None
  xla_bytes: float | None = None
  flops: float | None = None
  bytes_accessed: float | None = None
  collectives: dict[str, Collective] = dataclasses.field(default_factory=dict)
  largest_collectives: tuple[CollectiveSite, ...] = ()
  loops: int = 0
  unknown_trip_loops: int = 0
  model_flops_per_step: float | None = None
  estimate: Estimate | None = None
  error: str | None = None
  label: str = ""
  notes: tuple[str, ...] = ()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def roofline(flops: float, bytes_accessed: float, ici_bytes: float, chip: Chip, num_devices: int,
             model_flops_per_step: float | None = None) -> Estimate:
  """The Estimate for one device's FLOPs, bytes and ICI bytes of a step."""
  compute, memory, collective = flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth, \
      ici_bytes / chip.ici_bandwidth
  step = max(compute, memory) + collective
  bound = max((compute, "compute"), (memory, "memory"), (collective, "collectives"))[1]
  mfu = model_flops_per_step / (num_devices * chip.peak_flops * step) if model_flops_per_step and step > 0 else None
  return Estimate(compute, memory, collective, step, bound, mfu)


def report(compiled: jax.stages.Compiled, *, num_devices: int, chip: Chip,
           model_flops_per_step: float | None = None, label: str = "", hlo_text: str | None = None) -> CompileReport:
  """The CompileReport of a step compiled for `num_devices` devices of `chip` (e.g. on a topology mesh).

  hlo_text: the optimised HLO (default `compiled.as_text()`; `compile_report` reads libtpu's own dump, since
  jaxlib cannot always parse the HLO of a newer libtpu). Without any, collectives and loop iterations are
  left out and a note says so.
  """
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes +
           m.generated_code_size_in_bytes)
  host = m.host_argument_size_in_bytes + m.host_output_size_in_bytes + m.host_temp_size_in_bytes
  memory = Memory(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes,
                  m.generated_code_size_in_bytes, host, total)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  notes = []
  if hlo_text is None:
    try:
      hlo_text = compiled.as_text()
    except jax.errors.JaxRuntimeError as err:
      notes.append(f"no HLO text ({str(err).strip().splitlines()[0][:160]}): collectives and loop iterations after "
                   "the first are not counted")
  stats = hlo_stats(hlo_text, num_devices) if hlo_text else None
  if stats is not None and stats.unknown_trip_loops:
    notes.append(f"{stats.unknown_trip_loops} of {stats.loops} while loops have no readable trip count and count once")
  if stats is not None and stats.padded_all_reduces.count:
    p = stats.padded_all_reduces
    notes.append(f"{p.count} all-reduces ({p.ici_bytes / GiB:.2f} of the ICI GiB) sum zero-padded shards: all-gathers "
                 "done as all-reduces at twice the traffic, typically because a shard is not a whole number of TPU "
                 "tiles (try another fsdp / tensor size)")
  flops = cost.get("flops", 0.0) + (stats.loop_extra_flops if stats else 0.0)
  bytes_accessed = cost.get("bytes accessed", 0.0) + (stats.loop_extra_bytes if stats else 0.0)
  collectives = stats.collectives if stats else {}
  ici = sum(c.ici_bytes for c in collectives.values())
  return CompileReport(
      chip, num_devices, fits=total <= chip.hbm_bytes, required_bytes=total, available_bytes=chip.hbm_bytes,
      memory=memory, xla_flops=cost.get("flops"), xla_bytes=cost.get("bytes accessed"), flops=flops,
      bytes_accessed=bytes_accessed, collectives=collectives, largest_collectives=stats.largest if stats else (),
      loops=stats.loops if stats else 0, unknown_trip_loops=stats.unknown_trip_loops if stats else 0,
      model_flops_per_step=model_flops_per_step,
      estimate=roofline(flops, bytes_accessed, ici, chip, num_devices, model_flops_per_step), label=label,
      notes=tuple(notes))


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def hbm_shortfall(message: str) -> tuple[float | None, float | None] | None:
  """(required, available) bytes from a compiler out-of-HBM error (None where a number is missing); None when the
  message is not one."""
  if "RESOURCE_EXHAUSTED" not in message or "hbm" not in message.lower():
    return None
  size = r"([\d.]+)\s*([KMGT]?)i?B?"
  required = re.search(r"required for [^(]*\(" + size + r"\)", message) or re.search(r"Used " + size, message)
  available = re.search(r"available HBM \(" + size + r"\)", message) or re.search(r"of " + size + r" hbm", message)
  value = lambda m: float(m.group(1)) * _UNITS[m.group(2)] if m else None  # noqa: E731
  return value(required), value(available)


def compile_report(lowered: jax.stages.Lowered, *, num_devices: int, chip: Chip,
                   model_flops_per_step: float | None = None, label: str = "") -> CompileReport:
  """Compiles `lowered` and reports it; a compile that runs out of HBM becomes a report with fits=False and the
  compiler's numbers (other compile errors propagate). The HLO comes from the compiler's own text dump."""
  with tempfile.TemporaryDirectory(prefix="planx_hlo_") as dump:
    try:
      compiled = lowered.compile(compiler_options={"xla_dump_to": dump, "xla_dump_hlo_as_text": True})
    except jax.errors.JaxRuntimeError as err:
      shortfall = hbm_shortfall(str(err))
      if shortfall is None:
        raise
      return CompileReport(chip, num_devices, False, shortfall[0], shortfall[1],
                           model_flops_per_step=model_flops_per_step, error=str(err).strip().splitlines()[0],
                           label=label)
    texts = sorted((p for p in Path(dump).glob("*.after_optimizations.txt") if ".extracted." not in p.name),
                   key=lambda p: p.stat().st_size)  # the step's module; "extracted" ones are compiler probes
    hlo_text = texts[-1].read_text() if texts else None
  return report(compiled, num_devices=num_devices, chip=chip, model_flops_per_step=model_flops_per_step,
                label=label, hlo_text=hlo_text)


def _gib(n: float | None) -> str:
  return "?" if n is None else f"{n / GiB:.2f} GiB"


def verdict(r: CompileReport) -> str:
  """"fits (x of y, z%)" or "DOES NOT FIT (needs x, has y, short by z)" per device."""
  if r.fits:
    share = r.required_bytes / r.available_bytes
    return f"fits ({_gib(r.required_bytes)} of {_gib(r.available_bytes)} HBM, {share:.0%})"
  short = "" if None in (r.required_bytes, r.available_bytes) else \
      f", short by {_gib(r.required_bytes - r.available_bytes)}"
  return f"DOES NOT FIT (needs {_gib(r.required_bytes)} per device, has {_gib(r.available_bytes)}{short})"


def format_report(r: CompileReport) -> str:
  """The report as a readable table (per device unless said otherwise)."""
  c = r.chip
  lines = [f"== compile report: {r.num_devices} x TPU {c.name}{'  ' + r.label if r.label else ''} ==",
           f"chip: {_gib(c.hbm_bytes)} HBM, {c.peak_flops / 1e12:.0f} TFLOP/s bf16, {c.hbm_bandwidth / 1e9:.0f} GB/s "
           f"HBM, {c.ici_bandwidth / 1e9:.0f} GB/s ICI (public peak numbers)",
           f"memory per device: {verdict(r)}"]
  if r.error:
    lines.append(f"  compiler: {r.error}")
  if r.memory is not None:
    m = r.memory
    rows = [("arguments", m.arguments), ("outputs", m.outputs), ("aliased (donated, counted once)", -m.aliased),
            ("temps", m.temps), ("generated code", m.generated_code), ("total", m.total)]
    rows += [("host (offloaded)", m.host)] if m.host else []
    lines += [f"  {name:<34}{value / GiB:>10.3f} GiB" for name, value in rows]
  if r.flops is not None:
    loops = f" ({r.loops} while loops" + (f", {r.unknown_trip_loops} with unknown trip counts counted once)"
                                          if r.unknown_trip_loops else ")")
    lines += ["compute per device (cost_analysis counts a loop body once; 'with loops' adds its iterations):",
              f"  FLOPs            {r.xla_flops:.4g} cost_analysis, {r.flops:.4g} with loops{loops}",
              f"  bytes accessed   {r.xla_bytes:.4g} cost_analysis, {r.bytes_accessed:.4g} with loops"]
  if r.model_flops_per_step:
    lines.append(f"  model FLOPs per step (all devices, 6ND-style): {r.model_flops_per_step:.4g}")
  if r.collectives:
    lines.append("collectives per device and step (ICI bytes: what a ring sends):")
    lines.append(f"  {'kind':<20}{'count':>8}{'operand GiB':>14}{'ICI GiB':>12}")
    for kind in COLLECTIVES:
      col = r.collectives.get(kind, Collective())
      lines.append(f"  {kind:<20}{col.count:>8}{col.operand_bytes / GiB:>14.3f}{col.ici_bytes / GiB:>12.3f}")
    if r.largest_collectives:
      lines.append("  largest (ICI GiB per step, executions x kind, result shape, source op):")
    for site in r.largest_collectives:
      shape = site.shape if len(site.shape) <= 48 else site.shape[:45] + "..."
      lines.append(f"    {site.ici_bytes / GiB:8.2f}  {site.count} x {site.kind} {shape}  {_short_op(site.op_name)}")
  if r.estimate is not None:
    e = r.estimate
    mfu = "n/a (no model FLOPs)" if e.mfu is None else f"{e.mfu:.1%}"
    lines += ["estimate (roofline from peak numbers, not a measurement; collectives not overlapped):",
              f"  compute {e.compute_s * 1e3:.2f} ms, memory {e.memory_s * 1e3:.2f} ms, collectives "
              f"{e.collective_s * 1e3:.2f} ms -> step {e.step_s * 1e3:.2f} ms ({e.bound}-bound), MFU {mfu}"]
  lines += [f"note: {note}" for note in r.notes]
  return "\n".join(lines)


def _short_op(op_name: str, width: int = 72) -> str:
  """The end of a source op path, where the layer and operation are named."""
  op_name = re.sub(r"^jit\([^)]*\)/", "", op_name)
  return op_name if len(op_name) <= width else "..." + op_name[-(width - 3):]


def parse_layouts(text: str) -> list[dict[str, int]]:
  """"data=-1;fsdp=8,tensor=4" -> [{"data": -1}, {"fsdp": 8, "tensor": 4}] (axes left out are 1)."""
  layouts = []
  for part in (p.strip() for p in text.split(";")):
    layout = {}
    for item in (i.strip() for i in part.split(",") if i.strip()):
      axis, _, size = item.partition("=")
      if not re.fullmatch(r"-?\d+", size.strip()) or not axis.strip():
        raise ValueError(f"bad mesh layout item {item!r} in {text!r}; expected axis=size pairs such as "
                         "'fsdp=8,tensor=4', layouts separated by ';'")
      layout[axis.strip()] = int(size)
    if not layout:
      raise ValueError(f"empty mesh layout in {text!r}; expected e.g. 'data=-1;fsdp=-1;fsdp=8,tensor=4'")
    layouts.append(layout)
  return layouts


def layout_name(layout: Mapping[str, int]) -> str:
  return ",".join(f"{axis}={size}" for axis, size in layout.items())


@dataclasses.dataclass(frozen=True)
class SweepRow:
  layout: str
  report: CompileReport | None
  error: str | None


def sweep(build_fn: Callable[[dict[str, int]], CompileReport], layouts: Sequence[Mapping[str, int]]) -> list[SweepRow]:
  """`build_fn(layout)` (build, lower, compile, report one step under that mesh layout) for each layout; a layout
  that raises becomes a row with its error and the sweep goes on."""
  rows = []
  for layout in layouts:
    name = layout_name(layout)
    log.info("sweep: compiling layout %s", name)
    try:
      rows.append(SweepRow(name, build_fn(dict(layout)), None))
    except Exception as err:  # noqa: BLE001 - one failing layout must not end the sweep; its error is reported
      first = str(err).strip().splitlines()[0] if str(err).strip() else ""
      rows.append(SweepRow(name, None, f"{type(err).__name__}: {first}"))
  return rows


def format_sweep(rows: Sequence[SweepRow]) -> str:
  """One comparison table: layout, per-device memory, fits, FLOPs, collective bytes, estimated step time and MFU."""
  header = (f"{'layout':<28}{'mem/device':>12}{'fits':>6}{'TFLOP/dev':>11}{'ICI GiB':>9}{'step ms':>9}"
            f"{'MFU':>7}  note")
  lines = [header, "-" * len(header)]
  for row in rows:
    r = row.report
    if r is None:
      lines.append(f"{row.layout:<28}{'-':>12}{'-':>6}{'-':>11}{'-':>9}{'-':>9}{'-':>7}  failed: {row.error}")
      continue
    mem = _gib(r.required_bytes)
    flops = "-" if r.flops is None else f"{r.flops / 1e12:.2f}"
    ici = "-" if not r.collectives else f"{sum(c.ici_bytes for c in r.collectives.values()) / GiB:.2f}"
    e = r.estimate
    step = "-" if e is None else f"{e.step_s * 1e3:.1f}"
    mfu = "-" if e is None or e.mfu is None else f"{e.mfu:.1%}"
    note = (f"{e.bound}-bound" if e else "") if r.fits else verdict(r)
    lines.append(f"{row.layout:<28}{mem:>12}{'yes' if r.fits else 'NO':>6}{flops:>11}{ici:>9}{step:>9}{mfu:>7}  {note}")
  lines.append("(per device; step time and MFU are roofline estimates from peak numbers, not measurements)")
  return "\n".join(lines)
