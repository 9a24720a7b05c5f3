"""What a compiled program's HLO text says that cost_analysis() does not: collective traffic and loop trip counts.

Parses `compiled.as_text()` (post-optimisation, per-device HLO): collectives with their operand bytes and group
sizes, and the FLOPs and bytes accessed of while-loop iterations, which XLA's cost analysis counts once
(scanned layers, microbatch loops). Not the report or its estimate (see `compile_report.py`).
"""

import collections
import dataclasses
import math
import re

TOP_SITES = 5
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # f8 variants: 1
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([^\]]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s+\(")
_INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%(\S+)\s+=\s+")
_NAME = re.compile(r"%([^\s,(){}]+)")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([^\s,(){}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
# Instructions that move no data of their own (or whose called computation is counted instead).
_NO_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "opt-barrier", "async-start", "async-update", "async-done",
               "all-reduce-done", "all-gather-done", "collective-permute-done", "copy-start", "copy-done",
               "send-done", "recv-done"}


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One parsed HLO instruction line."""
  name: str
  shape: str  # result shape text: "f32[128,512]{1,0:T(8,128)}" or a tuple "(f32[2]{0}, s32[])"
  opcode: str
  operands: tuple[str, ...]  # operand instruction names
  args: str  # the text inside the operand parentheses (a constant's literal)
  attrs: str  # everything after the operand list
  root: bool


@dataclasses.dataclass(frozen=True)
class Collective:
  """One kind of collective summed over a step's executions (loop bodies times their trip counts), per device.

  operand_bytes: bytes of the operands (the buffer each device contributes).
  ici_bytes: bytes each device sends on a ring: all-reduce 2 (n-1)/n of its buffer, all-gather (n-1) shards,
    reduce-scatter and all-to-all (n-1)/n of the operand, collective-permute the operand (n: group size).
  """
  count: int = 0
  operand_bytes: float = 0.0
  ici_bytes: float = 0.0


@dataclasses.dataclass(frozen=True)
class CollectiveSite:
  """One collective instruction: its kind, executions per step, result shape, source op and total ICI bytes."""
  kind: str
  count: int
  shape: str
  op_name: str
  ici_bytes: float


@dataclasses.dataclass(frozen=True)
class HloStats:
  """Per-device statistics of one compiled step.

  collectives: kind -> Collective.
  loop_extra_flops / loop_extra_bytes: what the loop iterations after the first add to cost_analysis():
    dot / convolution / Pallas-kernel FLOPs, and operand + result bytes of the loop bodies' unfused instructions
    (as XLA counts "bytes accessed").
  loops: while loops; unknown_trip_loops: those whose trip count was not found (counted once). Every branch of a
    conditional counts as executed.
  padded_all_reduces: the all-reduces (within `collectives`) with operands that are shards written into zeros
    (dynamic-update-slice), counting those operands: all-gathers done as all-reduces, at twice an all-gather's
    ICI bytes. XLA does this when a shard is not a whole number of TPU tiles (e.g. 24 bf16 rows, 16-row tiles).
  largest: the collective instructions with the most ICI bytes per step, largest first (at most TOP_SITES).
  """
  collectives: dict[str, Collective]
  loop_extra_flops: float
  loop_extra_bytes: float
  loops: int
  unknown_trip_loops: int
  padded_all_reduces: Collective = Collective()
  largest: tuple[CollectiveSite, ...] = ()


def shape_bytes(shape: str) -> float:
  """Bytes of the arrays in a shape text (tuples summed; tiling padding ignored; every memory space, as XLA's
  "bytes accessed" counts them)."""
  total = 0.0
  for dtype, dims, _ in _ARRAY.findall(shape):
    total += DTYPE_BYTES.get(dtype, 1) * math.prod(int(d.lstrip("<=")) for d in dims.split(",") if d)
  return total


def _dims(shape: str) -> list[int]:
  match = _ARRAY.search(shape)
  return [int(d.lstrip("<=")) for d in match.group(2).split(",") if d] if match else []


def _balanced(text: str, start: int) -> int:
  """Index just past the parenthesis group that opens at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  raise ValueError(f"unbalanced parentheses in the HLO line {text[:200]!r}")


def _parse_instruction(line: str) -> Instruction | None:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  rest = line[match.end():]
  end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
  shape, rest = rest[:end], rest[end:].lstrip()
  paren = rest.find("(")
  if paren < 0:
    return None
  close = _balanced(rest, paren)
  args = rest[paren + 1:close - 1]
  return Instruction(match.group(2), shape, rest[:paren], tuple(_NAME.findall(args)), args, rest[close:],
                     bool(match.group(1)))


def parse_computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str | None]:
  """Computation name -> its instructions in text order (HLO prints callees before callers), and the ENTRY's
  name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header and line.rstrip().endswith("{"):
        current = header.group(1)
        computations[current] = []
        entry = current if line.startswith("ENTRY") else entry
    elif line.startswith("}"):
      current = None
    else:
      instruction = _parse_instruction(line)
      if instruction is not None:
        computations[current].append(instruction)
  return computations, entry


def _root(body: list[Instruction]) -> Instruction | None:
  return next((i for i in body if i.root), body[-1] if body else None)


def _callees(instruction: Instruction) -> list[tuple[str, str]]:
  """(role, computation) pairs an instruction calls: calls= / to_apply= / body= / condition= / branches."""
  callees = _CALLEES.findall(instruction.attrs)
  branches = _BRANCHES.search(instruction.attrs)
  if branches:
    callees += [("branch", name) for name in _NAME.findall(branches.group(1))]
  return callees


def _group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group: explicit {{0,1},{2,3}}, iota [groups,size]<=[...], or mesh[...] {'axes'}."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if mesh:
    sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
    return math.prod(sizes[name] for name in re.findall(r"'([^']+)'", mesh.group(2)))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
  if iota:
    return int(iota.group(2))
  explicit = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
  if explicit:
    return len(explicit.group(1).split(","))
  return num_devices  # replica_groups={}: one group of every device


def _ring_bytes(kind: str, operand_bytes: float, group: int) -> float:
  if kind == "collective-permute":
    return operand_bytes
  if group <= 1:
    return 0.0
  if kind == "all-reduce":
    return 2 * (group - 1) / group * operand_bytes
  if kind == "all-gather":
    return (group - 1) * operand_bytes
  return (group - 1) / group * operand_bytes  # reduce-scatter, all-to-all


def _literal(instruction: Instruction | None) -> int | None:
  """The value of an integer scalar `constant(6)`, else None."""
  if instruction is None or instruction.opcode != "constant":
    return None
  return int(instruction.args) if re.fullmatch(r"\s*-?\d+\s*", instruction.args) else None


def _scalar(name: str, computations, table: dict[str, Instruction]) -> Instruction | None:
  """The instruction that computes `name`: itself, or a fusion's root (see `_resolve` for its operands)."""
  op = table.get(name)
  if op is None or op.opcode != "fusion":
    return op
  called = re.search(r"calls=%([^\s,]+)", op.attrs)
  return _root(computations.get(called.group(1), [])) if called else None


def _resolve(name: str, fusion: Instruction | None, table: dict[str, Instruction]) -> Instruction | None:
  """An operand of a fused instruction: a fused parameter stands for the fusion's operand."""
  op = table.get(name)
  if op is not None and op.opcode == "parameter" and fusion is not None and fusion.opcode == "fusion":
    return table.get(fusion.operands[int(op.args)])
  return op


def _counter_compare(loop: Instruction, computations, table) -> tuple[str, int, int] | None:
  """(direction, tuple index of the counter, limit) of a loop condition `counter <op> constant`."""
  condition = re.search(r"condition=%([^\s,]+)", loop.attrs)
  root = _root(computations.get(condition.group(1), [])) if condition else None
  compare = _scalar(root.name, computations, table) if root is not None else None
  direction = re.search(r"direction=(\w+)", compare.attrs) if compare is not None else None
  if direction is None or compare.opcode != "compare" or len(compare.operands) != 2:
    return None
  values = [_resolve(name, root, table) for name in compare.operands]
  limits = [_literal(v) for v in values]
  if (limits[0] is None) == (limits[1] is None):
    return None
  op, counter, limit = direction.group(1), values[0], limits[1]
  if limit is None:  # constant on the left: flip the comparison
    op, counter, limit = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE"}.get(op, op), values[1], limits[0]
  index = re.search(r"index=(\d+)", counter.attrs) if counter is not None else None
  if not index or counter.opcode != "get-tuple-element":
    return None
  return op, int(index.group(1)), limit


def _counter_step(loop: Instruction, index: int, computations, table) -> int | None:
  """The constant the loop body adds to its counter (tuple element `index`) per iteration."""
  body = re.search(r"body=%([^\s,]+)", loop.attrs)
  root = _root(computations.get(body.group(1), [])) if body else None
  if root is None or root.opcode != "tuple" or index >= len(root.operands):
    return None
  outer = table.get(root.operands[index])
  update = _scalar(root.operands[index], computations, table)
  if update is None or update.opcode not in ("add", "subtract"):
    return None
  steps = [_literal(_resolve(name, outer, table)) for name in update.operands]
  step = steps[1] if steps[1] is not None else (steps[0] if update.opcode == "add" else None)
  return None if step is None else (-step if update.opcode == "subtract" else step)


def _trip_count(loop: Instruction, computations, table: dict[str, Instruction]) -> int | None:
  """Iterations of a while loop: XLA's known_trip_count, else `counter <op> constant` in its condition, the
  counter's start from the loop's init tuple (0 when not a constant) and its step from the body's update."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attrs)
  if known:
    return int(known.group(1))
  compare = _counter_compare(loop, computations, table)
  if compare is None:
    return None
  op, index, limit = compare
  step = _counter_step(loop, index, computations, table)
  if not step:
    return None
  init = table.get(loop.operands[0]) if loop.operands else None
  start = 0
  if init is not None and init.opcode == "tuple" and index < len(init.operands):
    start = _literal(table.get(init.operands[index])) or 0
  if op in ("LT", "LE"):
    span, direction = limit - start + (op == "LE"), 1
  elif op in ("GT", "GE"):
    span, direction = start - limit + (op == "GE"), -1
  elif op == "NE":
    span, direction = abs(limit - start), 1 if limit >= start else -1
  else:
    return None
  if span <= 0:
    return 0
  if step * direction <= 0:  # the counter moves away from the limit
    return None
  return -(-span // abs(step))


def _window(attrs: str, rank: int) -> list[tuple[int, int, int, int, int, int]]:
  """Per spatial dim of a convolution: (size, stride, pad low, pad high, lhs dilation, rhs dilation)."""
  found = re.search(r"window=\{([^}]*)\}", attrs)
  fields = dict(item.split("=", 1) for item in found.group(1).split()) if found else {}

  def ints(key: str) -> list[int]:
    return [int(v) for v in fields[key].split("x")] if key in fields else [1] * rank

  pads = [tuple(int(v) for v in p.split("_")) for p in fields["pad"].split("x")] if "pad" in fields else [(0, 0)] * rank
  return [(k, s, lo, hi, ld, rd) for k, s, (lo, hi), ld, rd in zip(ints("size"), ints("stride"), pads,
                                                                      ints("lhs_dilate"), ints("rhs_dilate"))]


def _taps(out: int, size: int, stride: int, low: int, n: int, lhs_dilation: int, rhs_dilation: int) -> int:
  """(output position, window tap) pairs of one spatial dim that land on an input element (not padding)."""
  if out * size > 10**7:  # too many to enumerate: every tap counts
    return out * size
  count = 0
  for o in range(out):
    for k in range(size):
      pos = o * stride + k * rhs_dilation - low
      count += pos >= 0 and pos % lhs_dilation == 0 and pos // lhs_dilation < n
  return count


def _convolution_flops(instruction: Instruction, table: dict[str, Instruction]) -> float:
  """2 x batch x output features x input features x the in-bounds (output, tap) pairs of each spatial dim. XLA:TPU
  writes batched matmuls as convolutions whose padded windows hit one element per output, so padding matters."""
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attrs)
  lhs, rhs = (_dims(table[name].shape) for name in instruction.operands[:2])
  out = _dims(instruction.shape)
  if not labels or len(labels.group(1)) != len(lhs) or len(labels.group(3)) != len(out):
    return 0.0
  lhs_labels, rhs_labels, out_labels = labels.groups()
  spatial = sorted(c for c in out_labels if c.isdigit())
  window = _window(instruction.attrs, len(spatial))
  macs = math.prod(size for size, c in zip(out, out_labels) if not c.isdigit())  # batch x output features
  macs *= rhs[rhs_labels.index("i")] if "i" in rhs_labels else 1
  for d, (size, stride, low, _, lhs_dilation, rhs_dilation) in zip(spatial, window):
    macs *= _taps(out[out_labels.index(d)], size, stride, low, lhs[lhs_labels.index(d)], lhs_dilation,
                  rhs_dilation)
  return 2.0 * macs


def _flops(instruction: Instruction, table: dict[str, Instruction]) -> float:
  """FLOPs of a dot / convolution (2 per multiply-add) or of a Pallas kernel (its declared cost estimate)."""
  if instruction.opcode == "dot":
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attrs)
    lhs = _dims(table[instruction.operands[0]].shape)
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2.0 * math.prod(_dims(instruction.shape)) * k
  if instruction.opcode == "convolution":
    return _convolution_flops(instruction, table)
  if instruction.opcode == "custom-call":
    estimate = re.search(r'"cost_estimate":\{([^}]*)\}', instruction.attrs)
    flops = re.search(r'"flops":"?(\d+)', estimate.group(1)) if estimate else None
    return float(flops.group(1)) if flops else 0.0
  return 0.0


def _traffic(instruction: Instruction, computations, table: dict[str, Instruction]) -> float:
  """Bytes one unfused instruction reads and writes. A buffer it only dynamic-slices counts as the slices; a
  buffer it updates in place (dynamic-update-slice) counts as the update written."""
  def size(name: str) -> float:
    return shape_bytes(table[name].shape) if name in table else 0.0

  body, params = [instruction], dict(enumerate(instruction.operands))
  if instruction.opcode == "fusion":
    body = computations.get(re.search(r"calls=%([^\s,]+)", instruction.attrs).group(1), [])
    params = {int(i.args): i.name for i in body if i.opcode == "parameter"}
  users = collections.defaultdict(list)
  for i in body:
    for position, name in enumerate(i.operands):
      users[name].append((i, position))
  total = 0.0
  for index, name in enumerate(instruction.operands):
    uses = users.get(params.get(index, ""), [])
    if uses and all(u.opcode == "dynamic-slice" and position == 0 for u, position in uses):
      total += sum(shape_bytes(u.shape) for u, _ in uses)
    elif not (uses and all(u.opcode == "dynamic-update-slice" and position == 0 for u, position in uses)):
      total += size(name)
  root = _root(body) if instruction.opcode == "fusion" else instruction
  outputs = [table[n] for n in root.operands if n in table] if root.opcode == "tuple" else [root]
  for out in outputs:
    total += size(out.operands[1]) if out.opcode == "dynamic-update-slice" else shape_bytes(out.shape)
  return total


def _async_repeat(instruction: Instruction, body: list[Instruction]) -> bool:
  """TPU async collective fusions repeat one collective in its start, continuation and done fusions; only the
  start (or a plain collective) counts."""
  config = re.search(r'"async_collective_fusion_config":\{"flag_start":"(-?\d+)"', instruction.attrs)
  done = any(i.opcode == "custom-call" and "AsyncCollectiveDone" in i.attrs for i in body)
  return done or (config is not None and config.group(1) != "-1")


def _zero_padded(name: str, computations, table: dict[str, Instruction], depth: int = 0) -> bool:
  """The value `name` is a buffer written by a dynamic-update-slice (plain, a fusion's root, or copied)."""
  op = table.get(name)
  if op is None or depth > 4:
    return False
  if op.opcode == "fusion":
    called = re.search(r"calls=%([^\s,]+)", op.attrs)
    root = _root(computations.get(called.group(1), [])) if called else None
    return root is not None and root.opcode == "dynamic-update-slice"
  if op.opcode in ("copy", "copy-start", "copy-done", "bitcast") and op.operands:
    return _zero_padded(op.operands[0], computations, table, depth + 1)
  return op.opcode == "dynamic-update-slice"


def hlo_stats(hlo_text: str, num_devices: int) -> HloStats:
  """Collectives and loop corrections of one compiled (SPMD-partitioned, per-device) HLO module's text."""
  computations, entry = parse_computations(hlo_text)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text (expected `compiled.as_text()` of a jitted function)")
  table = {i.name: i for body in computations.values() for i in body}
  # Executions of each computation per step, and the same with every loop run once (as cost_analysis counts).
  runs, runs_once, kind = {entry: 1}, {entry: 1}, {entry: "control"}
  loops = unknown = 0
  for name in reversed(list(computations)):  # callers before callees
    for instruction in computations[name]:
      trips = 1
      if instruction.opcode == "while":
        found = _trip_count(instruction, computations, table)
        loops, unknown, trips = loops + 1, unknown + (found is None), 1 if found is None else found
      for role, callee in _callees(instruction):
        runs[callee] = runs.get(callee, 0) + runs.get(name, 0) * trips
        runs_once[callee] = runs_once.get(callee, 0) + runs_once.get(name, 0)
        kind[callee] = "fused" if instruction.opcode == "fusion" else "applied" if role == "to_apply" else "control"
  collectives = {k: Collective() for k in COLLECTIVES}
  padded, sites = Collective(), []
  extra_flops = extra_bytes = 0.0
  for name, body in computations.items():
    count, extra = runs.get(name, 0), runs.get(name, 0) - runs_once.get(name, 0)
    if kind.get(name) == "applied" or not count:
      continue
    for instruction in body:
      base = instruction.opcode.removesuffix("-start")
      if base in COLLECTIVES and not _async_repeat(instruction, body):
        base = "reduce-scatter" if name.startswith("all-reduce-scatter") else base  # TPU's fused reduce-scatter
        operand = sum(shape_bytes(table[o].shape) for o in instruction.operands if o in table)
        group = _group_size(instruction.attrs, num_devices)
        c, ring = collectives[base], count * _ring_bytes(base, operand, group)
        collectives[base] = Collective(c.count + count, c.operand_bytes + count * operand, c.ici_bytes + ring)
        op_name = re.search(r'op_name="([^"]*)"', instruction.attrs)
        sites.append(CollectiveSite(base, count, re.sub(r"\{[^}]*\}", "", instruction.shape),
                                    op_name.group(1) if op_name else "", ring))
        zeros = sum(shape_bytes(table[o].shape) for o in instruction.operands
                    if base == "all-reduce" and o in table and _zero_padded(o, computations, table))
        if zeros:
          padded = Collective(padded.count + count, padded.operand_bytes + count * zeros,
                              padded.ici_bytes + count * _ring_bytes(base, zeros, group))
      if extra > 0:
        extra_flops += extra * _flops(instruction, table)
        if kind.get(name) == "control" and instruction.opcode not in _NO_TRAFFIC:
          extra_bytes += extra * _traffic(instruction, computations, table)
  largest = tuple(sorted(sites, key=lambda site: -site.ici_bytes)[:TOP_SITES])
  return HloStats(collectives, extra_flops, extra_bytes, loops, unknown, padded, largest)
