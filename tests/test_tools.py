"""Smoke run of the benchmark scripts on tiny configs (they must not rot; nothing here checks a speed)."""

import re

from planx_jax.tools import bench_planner

ROW = re.compile(r"^(forward|greedy decode) .*?(scan|unrolled)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x")


def test_bench_planner_tiny_prints_the_comparison_table(capsys):
  bench_planner.main(["--tiny", "--batches", "2"])
  lines = capsys.readouterr().out.splitlines()
  assert "planx tok/s" in lines[1] and "transformers tok/s" in lines[1]
  rows = [ROW.match(line) for line in lines[2:]]
  assert all(rows) and len(rows) == 4
  assert [(m.group(1), m.group(2)) for m in rows] == [
      ("forward", "scan"), ("forward", "unrolled"), ("greedy decode", "scan"), ("greedy decode", "unrolled")]
  for m in rows:
    planx, hf, ratio = (float(m.group(i)) for i in (3, 4, 5))
    assert planx > 0 and hf > 0 and abs(ratio - planx / hf) <= 0.01 + 0.01 * ratio


def test_bench_dit_tiny_prints_the_comparison_table(capsys):
  from planx_jax.tools import bench_dit

  bench_dit.main(["--tiny"])
  lines = capsys.readouterr().out.splitlines()
  assert "planx ms" in lines[1] and "diffusers ms" in lines[1]
  rows = [re.match(r"^forward\s+(scan|unrolled)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", line) for line in lines[2:]]
  assert all(rows) and [m.group(1) for m in rows] == ["scan", "unrolled"]
  for m in rows:
    planx, ref, ratio = (float(m.group(i)) for i in (2, 3, 4))
    # Times are printed to 0.1 ms: allow the ratio that rounding can move it by.
    assert planx > 0 and ref > 0 and abs(ratio - ref / planx) <= 0.01 + ratio * (0.05 / planx + 0.05 / ref)


def test_bench_tatok_tiny_prints_throughput_and_memory(capsys):
  from planx_jax.tools import bench_tatok

  bench_tatok.main(["--tiny"])
  out = capsys.readouterr().out
  rows = re.findall(r"^(\d) \((\d+)\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)%", out, re.M)
  assert [(r[0], r[1]) for r in rows] == [("0", "729"), ("2", "81")]
  for _, _, planx, torch_rate, ratio, same in rows:
    assert float(planx) > 0 and float(torch_rate) > 0 and float(same) == 100.0
    assert abs(float(ratio) - float(planx) / float(torch_rate)) <= 0.01 + 0.02 * float(ratio)
  dense = re.search(r"^dense argmax\s+([\d.]+)", out, re.M)
  streaming = re.search(r"^streaming, tile 256\s+([\d.]+)\s+([\d.]+)x", out, re.M)
  assert dense and streaming and float(streaming.group(2)) < 1.0


def test_bench_vae_tiny_prints_the_comparison_table(capsys):
  from planx_jax.tools import bench_vae

  bench_vae.main(["--tiny"])
  lines = capsys.readouterr().out.splitlines()
  assert "planx fps" in lines[1] and "diffusers fps" in lines[1]
  rows = [re.match(r"^(encode|decode)\s+(\d+x\d+x\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", line) for line in lines[2:4]]
  assert all(rows) and [m.group(1) for m in rows] == ["encode", "decode"]
  for m in rows:
    planx, ref, ratio = (float(m.group(i)) for i in (3, 4, 5))
    assert planx > 0 and ref > 0 and abs(ratio - planx / ref) <= 0.01 + 0.01 * ratio
