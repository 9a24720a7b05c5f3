"""AOT compile reports for TPU topologies on this CPU host (libtpu, no TPU): memory vs HBM, collectives from the
HLO, loop-corrected FLOPs, the roofline arithmetic, out-of-HBM verdicts, layout sweeps and `planx compile`.

Small functions on v5e:2x2 (four chips); nothing runs and nothing large is allocated.
"""

import json
import math
import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from planx_jax.cli import main  # noqa: E402
from planx_jax.commands import compile as compile_command  # noqa: E402
from planx_jax.aot import compile_report as cr  # noqa: E402
from planx_jax.aot.hlo_stats import hlo_stats  # noqa: E402

F32 = 4


@pytest.fixture(scope="module")
def devices():
  return cr.topology_devices("v5e:2x2")


@pytest.fixture(scope="module")
def mesh(devices):
  return Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))


def _sds(mesh, shape, spec, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


@pytest.fixture(scope="module")
def matmul(mesh):
  """x [256, 1024] over (data, tensor) @ w [1024, 512] over tensor: the contraction is split over "tensor", so
  each device's partial [128, 512] product is all-reduced within its pair of tensor devices."""
  x = _sds(mesh, (256, 1024), P("data", "tensor"))
  w = _sds(mesh, (1024, 512), P("tensor", None))
  fn = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P("data", None)))
  return fn.lower(x, w).compile()


def test_topology_devices_and_chip(devices):
  assert len(devices) == 4 and cr.chip_for(devices) == cr.CHIPS["v5e"]
  assert cr.chip_for(cr.topology_devices("v5p:2x2x1")).name == "v5p"
  assert cr.chip_for(cr.topology_devices("v6e:2x2")).peak_flops == 918e12
  v4 = cr.topology_devices("v4:2x2x1")  # megacore: one device per chip
  assert len(v4) == 4 and cr.chip_for(v4) == cr.CHIPS["v4"]


@pytest.mark.parametrize("name", ["v5e:0x2", "v5p:2x2", "v6e:2x2x2", "v7:2x2", "v5e-4", "v5e:3x3", "v5e:256x256"])
def test_bad_topology_names_list_the_accepted_forms(name):
  with pytest.raises(ValueError, match="accepted forms: v5e:AxB") as err:
    cr.topology_devices(name)
  assert repr(name) in str(err.value)


def test_report_memory_collectives_and_estimate(matmul):
  chip = cr.CHIPS["v5e"]
  model_flops = 2.0 * 256 * 1024 * 512
  r = cr.report(matmul, num_devices=4, chip=chip, model_flops_per_step=model_flops)
  m = r.memory
  # Per-device shards: x [128, 512] and w [512, 512] in, [128, 512] out.
  assert m.arguments == (128 * 512 + 512 * 512) * F32 and m.outputs == 128 * 512 * F32
  assert m.generated_code > 0 and m.aliased == 0
  assert m.total == m.arguments + m.outputs - m.aliased + m.temps + m.generated_code == r.required_bytes
  assert r.fits and r.available_bytes == 16 * 2**30
  ar = r.collectives["all-reduce"]
  assert ar.count == 1 and ar.operand_bytes == 128 * 512 * F32
  assert ar.ici_bytes == pytest.approx(2 * (2 - 1) / 2 * 128 * 512 * F32)  # ring over a group of 2
  assert all(r.collectives[k].count == 0 for k in ("all-gather", "reduce-scatter", "all-to-all"))
  # The per-device matmul: 2 * 128 * 512 (local K) * 512 FLOPs, plus the all-reduce's adds.
  assert 2 * 128 * 512 * 512 <= r.flops <= 2 * 128 * 512 * 512 * 1.01 and r.flops == r.xla_flops
  e = r.estimate
  compute, memory = r.flops / 197e12, r.bytes_accessed / 819e9
  assert e.compute_s == pytest.approx(compute) and e.memory_s == pytest.approx(memory)
  assert e.collective_s == pytest.approx(128 * 512 * F32 / 200e9)
  assert e.step_s == pytest.approx(max(compute, memory) + 128 * 512 * F32 / 200e9)
  assert e.mfu == pytest.approx(model_flops / (4 * 197e12 * e.step_s))
  text = cr.format_report(r)
  assert "fits" in text and "all-reduce" in text and "not a measurement" in text


def test_scanned_layers_count_every_iteration(mesh):
  """cost_analysis() counts a while body once; the report adds the other iterations of a 6-layer scan."""
  layers, width, rows = 6, 512, 256
  ws = _sds(mesh, (layers, width, width), P(None, "tensor", None))
  x = _sds(mesh, (rows, width), P("data", None))

  def forward(ws, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

  compiled = jax.jit(forward).lower(ws, x).compile()
  r = cr.report(compiled, num_devices=4, chip=cr.CHIPS["v5e"])
  per_layer = 2 * (rows // 2) * (width // 2) * width  # one device: its 128 rows, its half of each contraction
  assert r.loops == 1 and r.unknown_trip_loops == 0
  assert r.xla_flops < 2 * per_layer
  assert layers * per_layer <= r.flops <= layers * per_layer * 1.05
  assert r.bytes_accessed > r.xla_bytes
  # Each layer sums its partial [128, 512] products over the tensor pair (XLA picks all-reduce or reduce-scatter).
  sums = [r.collectives["all-reduce"], r.collectives["reduce-scatter"]]
  assert sum(c.count for c in sums) == layers
  assert sum(c.operand_bytes for c in sums) == layers * (rows // 2) * width * F32


# A hand-written per-device module: a 5-trip loop (counter 2, 4, ..., 10 while 11 > i) whose body all-reduces a
# dot over pairs; an async all-gather repeated in its start and done fusions; an all-reduce of a zero-padded shard
# over all 4 devices; a collective-permute. START / LATER: TPU's async-collective-fusion configs of the start and
# the later fusions of one collective.
SYNTHETIC_HLO = """HloModule synthetic, is_scheduled=true

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %limit = s32[] constant(11)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %gt = pred[] compare(%limit, %i), direction=GT
}

%body (p.1: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p.1 = (s32[], f32[8,128]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %h = f32[8,128]{1,0} get-tuple-element(%p.1), index=1
  %zf = f32[] constant(0)
  %w = f32[128,128]{1,0} broadcast(%zf), dimensions={}
  %dot = f32[8,128]{1,0} dot(%h, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ar = f32[8,128]{1,0} all-reduce(%dot), replica_groups={{0,1},{2,3}}, to_apply=%add, metadata={op_name="jit(f)/dot"}
  %two = s32[] constant(2)
  %next = s32[] add(%i.1, %two)
  ROOT %t = (s32[], f32[8,128]{1,0}) tuple(%next, %ar)
}

%start_fusion (param_0: bf16[16,64]) -> (bf16[16,64], bf16[64,64]) {
  %param_0 = bf16[16,64]{1,0} parameter(0)
  %ag = bf16[64,64]{1,0} all-gather(%param_0), channel_id=2, replica_groups=[1,4]<=[4], backend_config=START
  ROOT %acs.root = (bf16[16,64]{1,0}, bf16[64,64]{1,0}) custom-call(%ag), custom_call_target="AsyncCollectiveStart"
}

%done_fusion (param_0.1: bf16[16,64], param_1.1: bf16[64,64]) -> bf16[64,64] {
  %param_0.1 = bf16[16,64]{1,0} parameter(0)
  %param_1.1 = bf16[64,64]{1,0} parameter(1)
  %ag.1 = bf16[64,64]{1,0} all-gather(%param_0.1), channel_id=2, replica_groups=[1,4]<=[4], backend_config=LATER
  ROOT %acd.root = bf16[64,64] custom-call(%param_0.1, %param_1.1, %ag.1), custom_call_target="AsyncCollectiveDone"
}

%pad (param_0.2: f32[4,128], param_1.2: f32[1,128], param_2.2: s32[]) -> f32[4,128] {
  %param_0.2 = f32[4,128]{1,0} parameter(0)
  %param_1.2 = f32[1,128]{1,0} parameter(1)
  %param_2.2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[4,128]{1,0} dynamic-update-slice(%param_0.2, %param_1.2, %param_2.2, %zero)
}

ENTRY %main (a: f32[8,128], b: bf16[16,64], c: f32[1,128]) -> (f32[8,128], bf16[64,64], f32[4,128], f32[8,128]) {
  %a = f32[8,128]{1,0} parameter(0)
  %start = s32[] constant(2)
  %init = (s32[], f32[8,128]{1,0}) tuple(%start, %a)
  %loop = (s32[], f32[8,128]{1,0}) while(%init), condition=%cond, body=%body
  %out.0 = f32[8,128]{1,0} get-tuple-element(%loop), index=1
  %b = bf16[16,64]{1,0} parameter(1)
  %acs = (bf16[16,64]{1,0}, bf16[64,64]{1,0}) fusion(%b), kind=kCustom, calls=%start_fusion
  %g0 = bf16[16,64]{1,0} get-tuple-element(%acs), index=0
  %g1 = bf16[64,64]{1,0} get-tuple-element(%acs), index=1
  %acd = bf16[64,64]{1,0} fusion(%g0, %g1), kind=kCustom, calls=%done_fusion
  %zf.1 = f32[] constant(0)
  %zeros = f32[4,128]{1,0} broadcast(%zf.1), dimensions={}
  %c = f32[1,128]{1,0} parameter(2)
  %idx = s32[] partition-id()
  %padded = f32[4,128]{1,0} fusion(%zeros, %c, %idx), kind=kLoop, calls=%pad
  %gathered = f32[4,128]{1,0} all-reduce(%padded), channel_id=3, replica_groups={}, to_apply=%add
  %perm = f32[8,128]{1,0} collective-permute(%a), source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  ROOT %out = (f32[8,128], bf16[64,64], f32[4,128], f32[8,128]) tuple(%out.0, %acd, %gathered, %perm)
}
""".replace("START", '{"async_collective_fusion_config":{"flag_start":"-1"}}').replace(
    "LATER", '{"async_collective_fusion_config":{"flag_start":"2"}}')


def test_hlo_stats_of_a_hand_written_module():
  s = hlo_stats(SYNTHETIC_HLO, num_devices=4)
  assert s.loops == 1 and s.unknown_trip_loops == 0
  ar, ag, cp = (s.collectives[k] for k in ("all-reduce", "all-gather", "collective-permute"))
  body, padded = 8 * 128 * F32, 4 * 128 * F32
  assert ar.count == 5 + 1 and ar.operand_bytes == 5 * body + padded
  assert ar.ici_bytes == 5 * (2 * 1 / 2 * body) + 2 * 3 / 4 * padded  # rings of 2 and of all 4 devices
  assert (ag.count, ag.operand_bytes, ag.ici_bytes) == (1, 16 * 64 * 2, 3 * 16 * 64 * 2)  # counted once, not twice
  assert (cp.count, cp.ici_bytes) == (1, body)
  assert (s.padded_all_reduces.count, s.padded_all_reduces.operand_bytes) == (1, padded)
  assert s.loop_extra_flops == 4 * 2 * 8 * 128 * 128  # iterations 2..5 of the dot
  # Per iteration: broadcast w (4 + 64 KiB), dot (h, w, out), all-reduce (in, out), counter add (3 x 4), the
  # condition's compare (4 + 4 + 1).
  per_iteration = (4 + 128 * 128 * F32) + (2 * body + 128 * 128 * F32) + 2 * body + 12 + 9
  assert s.loop_extra_bytes == 4 * per_iteration
  assert [site.kind for site in s.largest] == ["all-reduce", "all-gather", "collective-permute", "all-reduce"]
  assert s.largest[0].count == 5 and s.largest[0].op_name == "jit(f)/dot"


def test_arguments_beyond_hbm_do_not_fit(mesh):
  """17 GiB of f32 per device (abstract: nothing is allocated) on 16 GiB v5e chips."""
  rows_per_device = 17 * 2**30 // (1024 * F32)
  big = _sds(mesh, (4 * rows_per_device, 1024), P(("data", "tensor")))
  lowered = jax.jit(lambda x: x.sum(0)).lower(big)
  r = cr.compile_report(lowered, num_devices=4, chip=cr.CHIPS["v5e"])
  assert not r.fits and r.memory is None and r.estimate is None
  assert r.required_bytes >= 17 * 2**30 and r.available_bytes < 16 * 2**30  # the compiler's usable HBM
  assert "DOES NOT FIT" in cr.verdict(r) and "short by" in cr.verdict(r)
  assert "RESOURCE_EXHAUSTED" in r.error


def test_hbm_shortfall_parses_compiler_messages():
  assert cr.hbm_shortfall("RESOURCE_EXHAUSTED: ... required for HLO temporaries (20.50G) exceeds available HBM "
                          "(15.75G).") == (20.5 * 2**30, 15.75 * 2**30)
  assert cr.hbm_shortfall("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 40.5G of 31.25G hbm.") \
      == (40.5 * 2**30, 31.25 * 2**30)
  assert cr.hbm_shortfall("INVALID_ARGUMENT: bad shape") is None


def test_sweep_goes_on_past_a_failing_layout(devices):
  x_shape, w_shape = (512, 1024), (1024, 1024)

  def build(layout):
    sizes = {"data": 1, "tensor": 1, **layout}
    if math.prod(sizes.values()) != len(devices):
      raise ValueError(f"mesh {sizes} does not cover {len(devices)} devices")
    m = Mesh(np.array(devices).reshape(sizes["data"], sizes["tensor"]), ("data", "tensor"))
    lowered = jax.jit(lambda x, w: jnp.tanh(x @ w)).lower(_sds(m, x_shape, P("data", None)),
                                                        _sds(m, w_shape, P(None, "tensor")))
    return cr.compile_report(lowered, num_devices=4, chip=cr.CHIPS["v5e"], model_flops_per_step=2.0 * 512 * 1024**2)

  layouts = cr.parse_layouts("data=4; data=3 ;data=2,tensor=2")
  assert layouts == [{"data": 4}, {"data": 3}, {"data": 2, "tensor": 2}]
  rows = cr.sweep(build, layouts)
  assert [row.layout for row in rows] == ["data=4", "data=3", "data=2,tensor=2"]
  assert rows[1].report is None and "does not cover 4 devices" in rows[1].error
  assert rows[0].report.fits and rows[2].report.fits
  # Pure data parallel: x rows / 4 and all of w per device; data x tensor: x rows / 2 and half of w's columns.
  assert rows[0].report.memory.arguments == (128 * 1024 + 1024 * 1024) * F32
  assert rows[2].report.memory.arguments == (256 * 1024 + 1024 * 512) * F32
  table = cr.format_sweep(rows)
  assert "failed: ValueError" in table and table.count(" yes ") == 2
  with pytest.raises(ValueError, match="axis=size"):
    cr.parse_layouts("data:4")


def test_compile_command_on_the_tiny_planner_experiment(tmp_path, capsys):
  out = tmp_path / "report.json"
  # Tiny heads (16 wide) are below the Pallas kernel's 128 lanes: the override keeps XLA attention.
  assert main(["compile", "--config", "configs/planner_sft.py:tiny", "--topology", "v5e:2x2", "--json", str(out),
               "--config.planner.overrides.attention_impl=xla"]) == 0
  printed = capsys.readouterr().out
  assert "4 x TPU v5e" in printed and "fits" in printed and "MFU" in printed
  result = json.loads(out.read_text())
  report = result["report"]
  assert result["stage"] == "planner_sft" and report["fits"] and report["memory"]["total"] > 0
  assert report["model_flops_per_step"] > 0 and 0 < report["estimate"]["mfu"] < 1
  assert report["flops"] >= report["xla_flops"] > 0
  assert "mesh data=4,fsdp=1,context=1,tensor=1" in report["label"]


def test_compile_command_defaults_attention_to_pallas():
  from planx_jax.train.config_files import load_config

  config = load_config("configs/planner_sft.py:tiny")
  assert compile_command.use_pallas_attention(config) == ["planner"]
  assert config.planner.overrides.attention_impl == "pallas"
  config = load_config("configs/dit_stage1.py:tiny", ["--config.dit.overrides.attention_impl=xla"])
  assert compile_command.use_pallas_attention(config) == []
  assert config.dit.overrides.attention_impl == "xla"


@pytest.mark.parametrize("flags, message", [(["--topology", "v5e:0x2"], "accepted forms"),
                                            (["--topology", "v5e:2x2", "--sweep", "fsdp:4"], "axis=size")])
def test_compile_command_rejects_bad_input_before_compiling(flags, message, capsys):
  assert main(["compile", "--config", "configs/planner_sft.py:tiny", *flags]) == 2
  assert message in capsys.readouterr().err
