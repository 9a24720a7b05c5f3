"""`planx demo` end to end: world -> encoders and records -> the training stages -> held-out videos -> the judge's
table. With `ablation`, also DiT-only (same DiT compute), Plan-X without 3D RoPE on the semantic branch, and
Plan-X without end-to-end training. Not the stage configs (demo.settings) or the judge (world.judge).

Everything is written under `out`: data/, models/, runs/<stage>/ (checkpoints, TensorBoard), videos/<variant>/
(MP4 + episode JSON per held-out instruction, contact sheets, plan pictures), benchmark.md / benchmark.json.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np

from planx_jax import tatok
from planx_jax.data.tfds_builder import load_dataset
from planx_jax.data.tokenizer import planner_tokenizer
from planx_jax.demo import generation, pictures, stages
from planx_jax.demo import settings as demo_settings
from planx_jax.video_io import contact_sheet, write_mp4, write_png
from planx_jax.world import conditions, encoders, judge, records, scenes

log = logging.getLogger("planx.demo")

VARIANT_TITLES = {
    "ground_truth": "Ground-truth clips (judge check)",
    "dit_only": "DiT only (text + first frame, SFT, same DiT compute)",
    "plan_x_no_rope": "Plan-X w/o 3D RoPE (semantic branch)",
    "plan_x_no_e2e": "Plan-X w/o end-to-end (stage-1 DiT, planner SFT)",
    "oracle_plan": "Stage-1 DiT on ground-truth plans (oracle planner, an upper bound)",
    "plan_x": "Plan-X (planner + semantic branch)",
}


def _stage(name: str, demo, out: Path, **changes):
  steps = int(changes.pop("steps", demo.steps[name]))
  config = demo_settings.stage_config(name, steps)
  config.seed = int(demo.seed)
  config.data.tfds_dir = str(out / "data")
  for key, value in changes.items():  # dotted paths, e.g. "dit.checkpoint"
    *parents, field = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = value
  return config


def _records(demo, enc: encoders.Encoders, train_episodes, out: Path, progress: bool) -> None:
  """Writes the training records unless `out/data` already holds the ones this config makes (same world, encoders
  and sizes: the settings are stored next to the data)."""
  data, stamp = out / "data", out / "data_settings.json"
  settings = json.dumps({k: demo[k].to_dict() if hasattr(demo[k], "to_dict") else demo[k]
                         for k in ("seed", "world", "tatok", "text_len", "codec")}, sort_keys=True)
  if (data / "dataset_info.json").is_file() and stamp.is_file() and stamp.read_text() == settings:
    log.info("records: reusing %s (%d clips)", data, len(load_dataset(data)))
    return
  began = time.time()
  stamp.unlink(missing_ok=True)
  records.write_records(enc, train_episodes, data, progress=progress)
  stamp.write_text(settings)
  log.info("records: %d training clips written to %s in %.0f s", len(train_episodes), data, time.time() - began)


def train_models(demo, enc: encoders.Encoders, out: Path, ablation: bool, progress: bool) -> dict:
  """Runs every stage the requested variants need; returns {name: (task, params)}."""
  models = out / "models"
  tatok_dir = models / "tatok"
  tatok.save_checkpoint(tatok_dir, enc.tatok_config, enc.tatok_params, overwrite=True)
  runs = out / "runs"
  trained = {}

  def run(name, config):
    trained[name] = stages.run_stage(config, runs / name, progress)
    return trained[name]

  task, params = run("planner_sft", _stage("planner_sft", demo, out))
  stages.save_planner(task, params, task.config, models / "planner_sft")
  task, params = run("dit_sft", _stage("dit_sft", demo, out))
  stages.save_dit(task, params, models / "dit_sft")
  rope_options = (True, False) if ablation else (True,)
  for rope in rope_options:
    suffix = "" if rope else "_no_rope"
    task, params = run("dit_stage1" + suffix, _stage(
        "dit_stage1", demo, out, **{"dit.checkpoint": str(models / "dit_sft"), "tatok.checkpoint": str(tatok_dir)},
        **({} if rope else {"dit.overrides.semantic_rope": False})))
    stages.save_dit(task, params, models / ("dit_stage1" + suffix))
    run("end_to_end" + suffix, _stage(
        "end_to_end", demo, out, **{"planner.checkpoint": str(models / "planner_sft"),
                                    "dit.checkpoint": str(models / ("dit_stage1" + suffix))},
        **({} if rope else {"dit.overrides.semantic_rope": False})))
  if ablation:
    # DiT only: the same DiT examples as stage 1 + end-to-end (at batch 16), continuing from the base DiT SFT.
    s1, e2e = demo_settings.stage_config("dit_stage1", 1), demo_settings.stage_config("end_to_end", 1)
    extra = (int(demo.steps.dit_stage1) * s1.batch_size + int(demo.steps.end_to_end) * e2e.batch_size) // 16
    run("dit_only", _stage("dit_sft", demo, out, steps=extra, **{"dit.checkpoint": str(models / "dit_sft")}))
  return trained


def _planner(task, params, config) -> generation.Planner:
  tokenizer, plan_tokens = planner_tokenizer(config)
  return generation.Planner(task.planner_config, params["planner"], plan_tokens, tokenizer)


def render_variants(demo, enc, trained: dict, episodes: list[scenes.Episode], out: Path, ablation: bool
                    ) -> dict[str, list[np.ndarray]]:
  """Videos [T, H, W, 3] uint8 per variant for the held-out episodes (batched; the same noise per episode)."""
  gen = demo.generate
  k = enc.shapes.num_keyframes
  variants = ["ground_truth", "plan_x"] + (
      ["plan_x_no_rope", "plan_x_no_e2e", "oracle_plan", "dit_only"] if ablation else [])
  videos = {v: [] for v in variants}
  plans = []
  b = int(gen.batch_size)
  for start in range(0, len(episodes), b):
    part = episodes[start:start + b]
    idx = list(range(start, start + len(part)))
    cond = conditions.conditions(enc, part, idx, int(demo.seed))
    videos["ground_truth"].extend(scenes.render(e) for e in part)
    for name in variants[1:]:
      if name == "dit_only":
        task, params = trained["dit_only"]
        frames = generation.render(task.dit_config, params["dit"], enc, cond, gen)
      elif name in ("plan_x_no_e2e", "oracle_plan"):
        if name == "oracle_plan":  # TA-Tok codes of the ground-truth keyframes 1..K-1
          codes = conditions.ground_truth_plan(enc, part)
        else:
          planner = _planner(*trained["planner_sft"][:2], trained["planner_sft"][0].config)
          codes, _ = generation.plan(planner, part, cond, k, float(gen.temperature))
        task, params = trained["dit_stage1"]
        frames = generation.render(task.dit_config, params["dit"], enc, cond, gen,
                                   conditions.codebook_semantics(enc, cond, codes),
                                   generation.semantic_positions(task.dit_config, enc, list(range(k))))
      else:
        run = "end_to_end" + ("_no_rope" if name == "plan_x_no_rope" else "")
        task, params = trained[run]
        planner = _planner(task, params, task.config)
        codes, conversations = generation.plan(planner, part, cond, k, float(gen.temperature))
        semantic = generation.end_to_end_semantics(planner, conversations)
        frames = generation.render(task.dit_config, params["dit"], enc, cond, gen, semantic,
                                   generation.semantic_positions(task.dit_config, enc, list(range(1, k))))
        if name == "plan_x":
          plans.extend(codes)
      videos[name].extend(frames)
    log.info("rendered %d / %d held-out instructions", min(start + b, len(episodes)), len(episodes))
  _write_videos(enc, videos, plans, episodes, out, int(gen.num_videos))
  return videos


def _write_videos(enc, videos: dict, plans: list, episodes, out: Path, num_sheets: int) -> None:
  for name, clips in videos.items():
    folder = out / "videos" / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, (clip, episode) in enumerate(zip(clips, episodes)):
      write_mp4(folder / f"{i:03d}.mp4", clip, fps=scenes.FPS)
      (folder / f"{i:03d}.json").write_text(json.dumps(episode.to_json()) + "\n")
      if i < num_sheets:
        write_png(folder / f"{i:03d}_contact_sheet.png", contact_sheet(clip[enc.keyframes]))
        if name == "plan_x":
          picture = pictures.plan_picture(enc.code_rgb, plans[i], clip[enc.keyframes[1:]])
          write_png(folder / f"{i:03d}_plan.png", picture)


def benchmark(out: Path, variants: list[str]) -> dict[str, dict[str, float]]:
  table = {}
  for name in variants:
    scores = judge.score_directory(out / "videos" / name)
    table[name] = {m: float(scores["mean"][m]) for m in judge.METRICS}
  return table


def format_table(table: dict[str, dict[str, float]], num_videos: int) -> str:
  lines = [f"Held-out instructions: {num_videos} (judge: colour segmentation, planx_jax.world.judge)", "",
           "| Method | " + " | ".join(m.capitalize() for m in judge.METRICS) + " |",
           "|---|" + "---|" * len(judge.METRICS)]
  for name, row in table.items():
    lines.append(f"| {VARIANT_TITLES[name]} | " + " | ".join(f"{row[m]:.3f}" for m in judge.METRICS) + " |")
  return "\n".join(lines)


def run_demo(out: Path, demo=None, *, ablation: bool = False, progress: bool = True) -> dict:
  demo = demo or demo_settings.demo_config()
  out = Path(out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  began = time.time()
  train_episodes = list(scenes.WorldSource(int(demo.world.seed), "train", int(demo.world.num_train)))
  heldout = list(scenes.WorldSource(int(demo.world.seed), "heldout", int(demo.world.num_heldout)))
  enc = encoders.build_encoders(demo, train_episodes)
  _records(demo, enc, train_episodes, out, progress)
  trained = train_models(demo, enc, out, ablation, progress)
  log.info("training done after %.0f s; rendering %d held-out instructions", time.time() - began, len(heldout))
  videos = render_variants(demo, enc, trained, heldout, out, ablation)
  table = benchmark(out, list(videos))
  text = format_table(table, len(heldout))
  (out / "benchmark.md").write_text(text + "\n")
  (out / "benchmark.json").write_text(json.dumps({"table": table, "seconds": time.time() - began,
                                                   "config": demo.to_dict()}, indent=2, default=str) + "\n")
  return {"table": table, "text": text, "seconds": time.time() - began}
