"""The RL train tasks on hand-built rollout rows: planner GRPO / GSPO log-probs are the grammar sampler's distribution,
on-policy ratios are exactly 1 with the policy-gradient estimator as gradient, whole-batch normalisers make
microbatches sum to the batch; Flow-GRPO transitions, and TempAct's grouping (plan-level over M plans, exec-level over
each plan's N continuations, only the transition chunk in the executor loss)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.cli import main
from planx_jax.configs import rl_dit, rl_planner, rl_tempact
from planx_jax.data.conversation import build_plan_conversation
from planx_jax.data.tokenizer import planner_tokenizer
from planx_jax.losses import rl as rl_losses
from planx_jax.losses.lm import next_token_targets
from planx_jax.models.planner import Planner
from planx_jax.rl import hierarchy
from planx_jax.rl.planner_rollout import pack_rows
from planx_jax.sampling import flow_sde
from planx_jax.train import defaults
from planx_jax.train.config_files import load_config
from planx_jax.train.tasks import DiTFlowGRPO, PlannerGRPO
from planx_jax.train.tasks.dit_flow_grpo import guided_velocity
from planx_jax.world import scenes as world


def planner_config(**rl):
  c = rl_planner.get_config("tiny")
  c.data.shapes.num_keyframes = 2  # one planned keyframe: 81 scored codes per row
  c.data.seq_len = 1024
  c.rl.temperature = 0.7
  for key, value in rl.items():
    c.rl[key] = value
  return c


@pytest.fixture(scope="module")
def planner_setup():
  task = PlannerGRPO(planner_config())
  params = jax.jit(task.init_params)(jax.random.key(0))
  tokenizer, _ = planner_tokenizer(task.config)
  rng = np.random.default_rng(0)
  convs = []
  for i in range(4):
    e = world.sample_episode(0, i, "train")
    convs.append(build_plan_conversation(
        tokenizer, task.plan_tokens, e.image_description, e.video_prompt, 2,
        first_frame_codes=rng.integers(0, 128, 729), plan_codes=rng.integers(0, 128, (1, 81))))
  rows = pack_rows(convs, task.seq_len, task.plan_tokens.endoftext)
  rows["old_logp"] = np.asarray(jax.jit(task.token_logps)(params["planner"], rows))
  rows["ref_logp"] = rows["old_logp"] - 0.05 * rng.standard_normal(rows["old_logp"].shape).astype(np.float32)
  rewards = np.asarray([0.1, 0.7, 0.4, 0.2], np.float32)
  rows["rewards"] = rewards
  rows["advantages"] = np.asarray(rl_losses.group_advantages(rewards, 2), np.float32)
  return task, params, rows


def test_planner_logp_is_the_samplers_distribution(planner_setup):
  """Code-step log-probs: log-softmax over the code ids only, at the sampling temperature (what sample_plans draws
  from: structural tokens are forced and not scored)."""
  task, params, rows = planner_setup
  logits = Planner(task.planner_config).apply({"params": params["planner"]}, jnp.asarray(rows["token_ids"]))
  lo = task.plan_tokens.code_offset
  codes = np.asarray(logits, np.float64)[..., lo:lo + task.plan_tokens.codebook_size] / 0.7
  logz = np.log(np.exp(codes - codes.max(-1, keepdims=True)).sum(-1)) + codes.max(-1)
  targets, mask = (np.asarray(x) for x in next_token_targets(rows["token_ids"], rows["loss_mask"]))
  want = np.take_along_axis(codes, np.clip(targets - lo, 0, None)[..., None], -1)[..., 0] - logz
  got = rows["old_logp"]
  assert mask.sum() == 4 * 81
  np.testing.assert_allclose(got[mask], want[mask], atol=2e-5)
  assert np.all(got[~mask] == 0)


@pytest.mark.parametrize("level", ["token", "sequence", "sequence_token"])
def test_planner_on_policy_ratio_one_and_policy_gradient(planner_setup, level):
  task, params, rows = planner_setup
  task = PlannerGRPO(planner_config(level=level))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  norm = task.normalizers(batch)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(lambda p: task.loss(p, batch, None, 0, norm), has_aux=True))(
      params)
  assert float(metrics["rl/ratio_mean"]) == 1.0
  assert abs(float(loss)) < 1e-6  # advantages are zero-mean per group and every row scores 81 codes
  _, mask = next_token_targets(batch["token_ids"], batch["loss_mask"])
  adv = batch["advantages"]

  def estimator(p):  # -1/B sum_i A_i mean_t log pi(token_t): REINFORCE with the group baseline
    logp = task.token_logps(p["planner"], batch)
    per_row = jnp.sum(logp * mask, axis=1) / jnp.sum(mask, axis=1)
    return -jnp.mean(adv * per_row)

  want = jax.jit(jax.grad(estimator))(params)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_planner_microbatches_sum_to_the_batch(planner_setup, loss_type):
  _, params, rows = planner_setup
  task = PlannerGRPO(planner_config(loss_type=loss_type, beta=0.1))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  shifted = dict(batch, old_logp=batch["old_logp"] + 0.01)  # off policy: ratios differ from 1
  norm = task.normalizers(shifted)
  loss = jax.jit(lambda b: task.loss(params, b, None, 0, norm)[0])
  whole = loss(shifted)
  parts = sum(loss({k: v[s] for k, v in shifted.items()}) for s in (slice(0, 2), slice(2, 4)))
  np.testing.assert_allclose(float(parts), float(whole), rtol=1e-5, atol=1e-7)
  assert float(whole) != 0.0


# --- Flow-GRPO ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_setup():
  c = rl_dit.get_config("tiny")
  c.rl.guidance_scale = 4.0  # the trained velocity is the CFG one the sampler used
  task = DiTFlowGRPO(c)
  params = jax.jit(task.init_params)(jax.random.key(1))
  rng = np.random.default_rng(1)
  b = 4
  f = c.data.shapes.latent_shape[0]
  x = rng.standard_normal((b, *c.data.shapes.latent_shape)).astype(np.float32)
  rows = {"latents": x, "sigma": np.full((b,), task.sigmas[1], np.float32),
          "sigma_next": np.full((b,), task.sigmas[2], np.float32),
          "text_emb": rng.standard_normal((b, *c.data.shapes.text_shape)).astype(np.float32),
          "frame_mask": np.tile((np.arange(f) > 0).astype(np.float32), (b, 1)),
          "advantages": np.asarray([1.0, -1.0, 0.5, -0.5], np.float32), "rewards": np.zeros((b,), np.float32)}
  # x' drawn by the SDE from the task's own velocity (frame 0 given)
  timesteps = 1000.0 * rows["sigma"][:, None] * rows["frame_mask"]
  v = task.velocity(params["dit"], jnp.asarray(x), jnp.asarray(timesteps), jnp.asarray(rows["text_emb"]))
  step = task.sde_step(jnp.asarray(x), v, jnp.asarray(rows["sigma"]), jnp.asarray(rows["sigma_next"]),
                       noise=jnp.asarray(rng.standard_normal(x.shape).astype(np.float32)))
  rows["next_latents"] = np.asarray(step.prev_sample)
  rows["logprob_mask"] = rows["frame_mask"].copy()
  rows["old_logp"] = np.asarray(jax.jit(task.transition)(params["dit"], rows).log_prob)
  return task, params, rows


def test_flow_transition_is_the_sde_density(dit_setup):
  """The trained log-prob is the Gaussian density of the stored sample under the CFG velocity's SDE mean, averaged
  over the generated frames' elements (float64 numpy)."""
  task, params, rows = dit_setup
  out = jax.jit(task.transition)(params["dit"], rows)
  timesteps = 1000.0 * rows["sigma"][:, None] * rows["frame_mask"]
  v = np.asarray(guided_velocity(task.dit_config, params["dit"], jnp.asarray(rows["latents"]),
                                 jnp.asarray(timesteps), jnp.asarray(rows["text_emb"]), 4.0), np.float64)
  s, sp = float(rows["sigma"][0]), float(rows["sigma_next"][0])
  dt = sp - s
  sig = float(task.config.rl.noise_level) * np.sqrt(s / (1 - s))
  x = rows["latents"].astype(np.float64)
  mean = x * (1 + sig**2 / (2 * s) * dt) + v * (1 + sig**2 * (1 - s) / (2 * s)) * dt
  std = sig * np.sqrt(-dt)
  dens = -((rows["next_latents"] - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)
  want = dens[:, 1:].mean(axis=(1, 2, 3, 4))
  np.testing.assert_allclose(np.asarray(out.log_prob), want, atol=5e-4, rtol=1e-5)


def test_flow_on_policy_ratio_one(dit_setup):
  task, params, rows = dit_setup
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  loss, metrics = task.loss(params, batch, None, 0, task.normalizers(batch))
  assert float(metrics["rl/ratio"]) == 1.0
  np.testing.assert_allclose(float(loss), -float(np.mean(rows["advantages"])), atol=1e-7)


def test_only_the_transition_chunk_enters_the_executor_loss(dit_setup):
  """TempAct: the executor is updated on the first chunk after the switch. With context frames 0..1 fixed and the
  chunk = frame 2, changing the sample anywhere outside frame 2 leaves the loss and its gradient unchanged."""
  task, params, rows = dit_setup
  f = rows["frame_mask"].shape[1]
  frame_mask, chunk = hierarchy.chunk_masks(f, 1, 1, 4)
  np.testing.assert_array_equal(frame_mask[0], (np.arange(f) > 1).astype(np.float32))
  np.testing.assert_array_equal(chunk[0], (np.arange(f) == 2).astype(np.float32))
  base = dict(rows, frame_mask=frame_mask, logprob_mask=chunk * frame_mask)
  base["old_logp"] = np.asarray(jax.jit(task.transition)(params["dit"], base).log_prob) + 1e-4
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, b, None, 0, task.normalizers(b))[0]))
  loss, grads = grad_fn(params, base)
  outside = base["next_latents"].copy()
  outside[:, [0, 1, 3, 4]] += 1.0
  loss_o, grads_o = grad_fn(params, dict(base, next_latents=outside))
  assert float(loss_o) == float(loss)
  for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_o)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
  inside = base["next_latents"].copy()
  inside[:, 2] += 0.01
  assert abs(float(grad_fn(params, dict(base, next_latents=inside))[0]) - float(loss)) > 1e-6


def test_hierarchical_grouping():
  """Plan-level advantages are normalised over each prompt's M plans; exec-level over each plan's N continuations."""
  rl = defaults.base_config("dit_flow_grpo").rl
  groups = hierarchy.Groups(prompts=2, plans=3, continuations=4)
  rng = np.random.default_rng(0)
  r_plan = rng.random(6).astype(np.float32)
  r_video = rng.random((6, 4)).astype(np.float32)
  plan_adv, exec_adv = hierarchy.advantages(r_plan, r_video, groups, rl)
  for p in range(2):
    x = r_plan[3 * p:3 * p + 3].astype(np.float64)
    np.testing.assert_allclose(plan_adv[3 * p:3 * p + 3], (x - x.mean()) / (x.std(ddof=1) + 1e-4), atol=1e-5)
  for m in range(6):
    x = r_video[m].astype(np.float64)
    np.testing.assert_allclose(exec_adv[m], (x - x.mean()) / (x.std(ddof=1) + 1e-4), atol=1e-5)
  changed = r_video.copy()
  changed[4] += rng.random(4).astype(np.float32)  # plan 4's continuations
  r_plan2 = r_plan.copy()
  r_plan2[4] += 1.0  # and plan 4's R_plan (prompt 1)
  plan_adv2, exec_adv2 = hierarchy.advantages(r_plan2, changed, groups, rl)
  np.testing.assert_array_equal(exec_adv2[[0, 1, 2, 3, 5]], exec_adv[[0, 1, 2, 3, 5]])
  np.testing.assert_array_equal(plan_adv2[:3], plan_adv[:3])  # prompt 0's plans do not see prompt 1's
  assert not np.allclose(plan_adv2[3:], plan_adv[3:])


def test_rl_presets_build_and_check_their_groups():
  for spec in ("configs/rl_planner.py:1.5b", "configs/rl_planner.py:1.5b_reade", "configs/rl_dit.py:5b",
               "configs/rl_planner.py:demo", "configs/rl_dit.py:demo"):
    c = load_config(spec)
    defaults.check_keys(c)
  t = load_config("configs/rl_tempact.py:demo")
  defaults.check_keys(t)
  assert hierarchy.check_groups(t) == 2
  gspo = load_config("configs/rl_planner.py:1.5b")
  assert (gspo.rl.level, gspo.rl.eps_low, gspo.rl.beta, gspo.lora.rank, gspo.lora.alpha) == (
      "sequence", 5e-4, 5e-4, 32, 64.0)
  executor = load_config("configs/rl_dit.py:5b")
  assert (executor.rl.eps_high, executor.rl.advantage_clip, executor.lora.rank, executor.rl.group_size) == (
      1e-5, 2.0, 256, 8)


@pytest.mark.parametrize("preset, task_class, key, value, message", [
    (rl_planner, PlannerGRPO, "rl.group_size", 1, "group_size must be >= 2"),
    (rl_planner, PlannerGRPO, "batch_size", 5, "not a multiple of rl.group_size"),
    (rl_planner, PlannerGRPO, "rl.level", "sentence", "rl.level must be one of"),
    (rl_planner, PlannerGRPO, "rl.loss_type", "ppo", "rl.loss_type must be one of"),
    (rl_planner, PlannerGRPO, "rl.temperature", 0.0, "temperature must be > 0"),
    (rl_dit, DiTFlowGRPO, "rl.train_steps", 4, "train_steps must be in"),
    (rl_dit, DiTFlowGRPO, "rl.sde", "ddim", "rl.sde must be one of"),
    (rl_dit, DiTFlowGRPO, "batch_size", 5, "not a multiple of rl.group_size x rl.train_steps"),
])
def test_rl_stages_reject_bad_settings(preset, task_class, key, value, message):
  c = preset.get_config("tiny")
  section, _, field = key.rpartition(".")
  (c[section] if section else c)[field] = value
  with pytest.raises(ValueError, match=message):
    task_class(c)


def test_tempact_checks_batch_sizes():
  c = rl_tempact.get_config("tiny")
  c.executor_rl.batch_size = 2
  with pytest.raises(ValueError, match="executor_rl.batch_size must be"):
    hierarchy.check_groups(c)


def test_sde_window_trains_a_contiguous_window_never_the_last_step():
  for seed in range(20):
    w = np.asarray(flow_sde.sde_window(seed, 10, 2))
    steps = np.flatnonzero(w)
    assert len(steps) == 2 and steps[1] == steps[0] + 1 and steps[-1] < 9


@pytest.mark.parametrize("spec, model", [("configs/rl_planner.py:tiny", "planner"), ("configs/rl_dit.py:tiny", "dit")])
def test_rl_update_steps_compile_for_a_tpu_topology(spec, model, tmp_path, capsys):
  """`planx compile` lowers the RL update step (rollout rows in, sharded over the data axis) for TPU v5e."""
  out = tmp_path / "report.json"
  assert main(["compile", "--config", spec, "--topology", "v5e:2x2", "--json", str(out),
               f"--config.{model}.overrides.attention_impl=xla"]) == 0
  assert "4 x TPU v5e" in capsys.readouterr().out
  report = json.loads(out.read_text())
  assert report["stage"] in defaults.RL_STAGES and report["report"]["fits"]
  assert report["report"]["model_flops_per_step"] > 0
