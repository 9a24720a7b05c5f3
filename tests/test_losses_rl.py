"""Tests of planx_jax/losses/rl.py: the GRPO / GSPO losses against an independent float64 torch transcription
of TRL's GRPOTrainer formulas, policy-gradient identities, group / hierarchical advantages and log-probs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from planx_jax.losses import rl
from planx_jax.losses.lm import HEAD_LAYOUTS

TOL = dict(rtol=1e-6, atol=1e-6)
LEVELS = rl.IMPORTANCE_LEVELS
LOSS_TYPES = rl.LOSS_TYPES
EPS_LOW, EPS_HIGH = 0.1, 0.28  # asymmetric (DAPO's clip-higher)
MAX_LEN = 9


def _batch(seed=0):
  """B = 6 completions of different lengths (one empty), log-ratios large enough that clipping happens at every
  level, finite garbage at padded positions, mixed-sign advantages (one zero)."""
  rng = np.random.default_rng(seed)
  b, t = 6, 7
  lengths = np.array([7, 5, 3, 1, 0, 6])
  mask = np.arange(t)[None, :] < lengths[:, None]
  logp = rng.uniform(-4.0, -0.05, (b, t)).astype(np.float32)
  row_shift = np.array([0.3, -0.3, 0.05, -0.25, 0.0, 0.2])[:, None]
  old = (logp - row_shift - rng.normal(0.0, 0.25, (b, t))).astype(np.float32)
  ref = (logp + rng.normal(0.0, 0.3, (b, t))).astype(np.float32)
  adv = np.array([1.3, -0.7, 0.4, -1.1, 0.8, 0.0], np.float32)
  return logp, old, ref, adv, mask


def _torch_trl(logp, old, adv, mask, ref, *, level, loss_type, beta, num_items=None):
  """TRL GRPOTrainer._compute_loss transcribed in float64 torch: returns loss, d loss / d logp and the metrics."""
  logp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
  old, ref = torch.tensor(old, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
  adv = torch.tensor(adv, dtype=torch.float64)
  m = torch.tensor(mask, dtype=torch.float64)
  log_ratio = logp - old
  if level == "token":
    log_w = log_ratio
  else:
    seq = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    log_w = seq if level == "sequence" else logp - logp.detach() + seq.detach()
  coef_1 = torch.exp(log_w)
  coef_2 = torch.clamp(coef_1, 1 - EPS_LOW, 1 + EPS_HIGH)
  per_token = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
  per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
  if beta:
    per_token = per_token + beta * per_token_kl
  if loss_type == "grpo":
    loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
  elif loss_type == "bnpo":
    loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
  elif loss_type == "dr_grpo":
    loss = (per_token * m).sum() / (per_token.size(0) * MAX_LEN)
  else:
    normalizer = m.sum() if num_items is None else torch.tensor(float(num_items), dtype=torch.float64)
    loss = (per_token * m).sum() / normalizer.clamp(min=1.0)
  loss.backward()

  def global_mean(x):
    if x.shape[1] == 1:
      return (x.sum() / x.shape[0]).item()
    return ((x * m).sum() / m.sum().clamp(min=1.0)).item()

  is_low = ((coef_1 < 1 - EPS_LOW) & (adv.unsqueeze(1) < 0)).double()
  is_high = ((coef_1 > 1 + EPS_HIGH) & (adv.unsqueeze(1) > 0)).double()
  metrics = {"ratio_mean": global_mean(coef_1.detach()), "clip_low_frac": global_mean(is_low),
             "clip_high_frac": global_mean(is_high), "clip_frac": global_mean(torch.clamp(is_low + is_high, max=1)),
             "kl_mean": global_mean(per_token_kl.detach())}
  return loss.item(), logp.grad.numpy(), metrics


def _ours(logp, old, adv, mask, ref, **kwargs):
  def loss_fn(lp):
    return rl.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), ref_logp=jnp.asarray(ref),
                          eps_low=EPS_LOW, eps_high=EPS_HIGH, max_len=MAX_LEN, **kwargs)

  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp))
  return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_policy_loss_matches_trl(loss_type, level, beta):
  logp, old, ref, adv, mask = _batch()
  num_items = 41 if loss_type == "dapo" else None  # the whole generation batch's token count, larger than ours
  want_loss, want_grad, want_metrics = _torch_trl(logp, old, adv, mask, ref, level=level, loss_type=loss_type,
                                                  beta=beta, num_items=num_items)
  loss, grad, metrics = _ours(logp, old, adv, mask, ref, level=level, loss_type=loss_type, beta=beta,
                              num_tokens=num_items)
  np.testing.assert_allclose(loss, want_loss, **TOL)
  np.testing.assert_allclose(grad, want_grad, **TOL)
  assert want_metrics["clip_low_frac"] > 0 and want_metrics["clip_high_frac"] > 0  # clipping is exercised
  assert np.abs(want_grad).max() > 1e-3
  assert set(metrics) == set(want_metrics)
  for key, value in metrics.items():
    per_sequence = level == "sequence" and key != "kl_mean"
    # Token metrics share the loss's num_tokens (the whole generation batch for dapo): TRL's local mean rescaled.
    rescale = 1.0 if per_sequence or num_items is None else mask.sum() / num_items
    np.testing.assert_allclose(value, want_metrics[key] * rescale, **TOL, err_msg=key)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_gradient_is_the_policy_gradient_estimator(loss_type, level):
  logp, _, _, adv, mask = _batch(1)
  b = logp.shape[0]
  lengths = mask.sum(1)
  num_tokens = 37

  def loss_fn(lp):
    return rl.policy_loss(lp, jax.lax.stop_gradient(lp), jnp.asarray(adv), jnp.asarray(mask), level=level,
                          loss_type=loss_type, eps_low=EPS_LOW, eps_high=EPS_HIGH, max_len=MAX_LEN,
                          num_tokens=num_tokens if loss_type == "dapo" else None)

  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp))
  normaliser = {"grpo": np.maximum(lengths, 1)[:, None] * b, "bnpo": lengths.sum(), "dr_grpo": b * MAX_LEN,
                "dapo": num_tokens}[loss_type]
  want = -adv[:, None] * mask / normaliser  # REINFORCE with the group baseline folded into A
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(loss), -(adv[:, None] * mask / normaliser).sum(), rtol=1e-6, atol=1e-7)
  ratio = np.exp(np.asarray(rl.importance_log_weights(logp, logp, mask, level)))
  assert np.all(ratio == 1.0)
  assert float(metrics["clip_frac"]) == 0.0
  ratio_count = b if level == "sequence" else (num_tokens if loss_type == "dapo" else lengths.sum())
  per_unit = b if level == "sequence" else lengths.sum()
  np.testing.assert_allclose(float(metrics["ratio_mean"]), per_unit / ratio_count, rtol=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gspo_token_equals_gspo(loss_type):
  logp, old, ref, adv, mask = _batch(2)
  kwargs = dict(loss_type=loss_type, beta=0.02)
  gspo = _ours(logp, old, adv, mask, ref, level="sequence", **kwargs)
  gspo_token = _ours(logp, old, adv, mask, ref, level="sequence_token", **kwargs)
  np.testing.assert_allclose(gspo_token[0], gspo[0], **TOL)
  np.testing.assert_allclose(gspo_token[1], gspo[1], **TOL)  # per-sequence advantages: the same gradient too
  seq = np.asarray(rl.importance_log_weights(logp, old, mask, "sequence"))
  tok = np.asarray(rl.importance_log_weights(logp, old, mask, "sequence_token"))
  np.testing.assert_array_equal(tok, seq)


def test_gspo_token_gradient_is_per_token():
  """With per-token advantages each token's gradient is -s_i A_it / (n_i B), zero where that token's clip acts."""
  logp, old, _, _, mask = _batch(3)
  b, t = logp.shape
  adv_t = np.random.default_rng(3).normal(0.0, 1.0, (b, t)).astype(np.float32)

  def loss_fn(lp):
    return rl.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv_t), jnp.asarray(mask), level="sequence_token",
                          eps_low=EPS_LOW, eps_high=EPS_HIGH)[0]

  grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(logp)))
  lengths = mask.sum(1)
  log_ratio = (logp.astype(np.float64) - old) * mask
  s = np.exp(log_ratio.sum(1) / np.maximum(lengths, 1))[:, None]  # [B, 1]
  clip_active = ((s < 1 - EPS_LOW) & (adv_t < 0)) | ((s > 1 + EPS_HIGH) & (adv_t > 0))
  want = np.where(clip_active | ~mask, 0.0, -s * adv_t / (np.maximum(lengths, 1)[:, None] * b))
  assert clip_active[mask].any() and (~clip_active[mask]).any()
  np.testing.assert_allclose(grad, want, **TOL)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_microbatch_losses_sum_to_the_whole_batch(loss_type, level):
  logp, old, ref, adv, mask = _batch(4)
  kwargs = dict(level=level, loss_type=loss_type, beta=0.05, eps_low=EPS_LOW, eps_high=EPS_HIGH, max_len=MAX_LEN,
                ref_logp=ref)
  whole, whole_metrics = rl.policy_loss(logp, old, adv, mask, **kwargs)
  parts = [rl.policy_loss(logp[s], old[s], adv[s], mask[s], num_sequences=6, num_tokens=int(mask.sum()),
                          **{**kwargs, "ref_logp": ref[s]}) for s in (slice(0, 2), slice(2, 6))]
  np.testing.assert_allclose(sum(float(p[0]) for p in parts), float(whole), **TOL)
  for key, value in whole_metrics.items():
    np.testing.assert_allclose(sum(float(p[1][key]) for p in parts), float(value), **TOL, err_msg=key)


def test_policy_loss_jits_with_traced_normalisers_and_ignores_padding_garbage():
  logp, old, ref, adv, mask = _batch(5)
  kwargs = dict(level="sequence_token", loss_type="dapo", beta=0.1, kl="k1", advantage_clip=1.0)
  eager, _ = rl.policy_loss(logp, old, adv, mask, ref_logp=ref, num_tokens=30, **kwargs)
  jitted = jax.jit(functools.partial(rl.policy_loss, **kwargs))
  traced, _ = jitted(logp, old, adv, mask, ref_logp=ref, num_tokens=jnp.asarray(30.0))
  np.testing.assert_allclose(float(traced), float(eager), rtol=1e-6)
  poisoned = [np.where(mask, x, np.float32(np.nan)) for x in (logp, old, ref)]
  poisoned[0] = np.where(mask, logp, np.float32(np.inf))
  grad_fn = jax.grad(lambda lp: rl.policy_loss(lp, poisoned[1], adv, mask, ref_logp=poisoned[2], num_tokens=30,
                                               **kwargs)[0])
  np.testing.assert_allclose(float(rl.policy_loss(poisoned[0], poisoned[1], adv, mask, ref_logp=poisoned[2],
                                                  num_tokens=30, **kwargs)[0]), float(eager), rtol=1e-6)
  clean_grad = jax.grad(lambda lp: rl.policy_loss(lp, old, adv, mask, ref_logp=ref, num_tokens=30, **kwargs)[0])
  np.testing.assert_allclose(np.asarray(grad_fn(jnp.asarray(poisoned[0]))), np.asarray(clean_grad(logp)), **TOL)


def test_advantage_clip_and_log_ratio_clip():
  logp, old, _, adv, mask = _batch(6)
  big = adv * 10
  clipped, _ = rl.policy_loss(logp, old, big, mask, advantage_clip=2.0)
  want, _ = rl.policy_loss(logp, old, np.clip(big, -2.0, 2.0), mask)
  np.testing.assert_allclose(float(clipped), float(want), **TOL)
  far = (old + 50.0 * mask).astype(np.float32)  # log-ratio -50 on counted tokens
  weights = np.asarray(rl.importance_log_weights(logp, far, mask, "token", log_ratio_clip=20.0))
  np.testing.assert_array_equal(weights, np.where(mask, np.maximum(logp - far, -20.0), 0.0))


@pytest.mark.parametrize("kind", rl.KL_KINDS)
def test_kl_penalty(kind):
  rng = np.random.default_rng(7)
  logp, ref = rng.normal(-2, 1, (3, 5)).astype(np.float32), rng.normal(-2, 1, (3, 5)).astype(np.float32)
  d = logp.astype(np.float64) - ref
  want = {"k1": d, "k2": 0.5 * d**2, "squared": 0.5 * d**2, "k3": np.exp(-d) + d - 1}[kind]
  got = np.asarray(rl.kl_penalty(logp, ref, kind))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if kind != "k1":
    assert (got >= 0).all()
  np.testing.assert_array_equal(np.asarray(rl.kl_penalty(logp, logp, kind)), 0.0)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", rl.ADVANTAGE_SCALES)
def test_group_advantages_match_numpy(scale, ddof):
  rng = np.random.default_rng(8)
  rewards = rng.uniform(0, 1, 12).astype(np.float32)
  got = np.asarray(rl.group_advantages(rewards, 4, scale=scale, eps=1e-3, ddof=ddof))
  grouped = rewards.astype(np.float64).reshape(3, 4)
  centred = grouped - grouped.mean(1, keepdims=True)
  if scale == "group":
    want = centred / (grouped.std(1, ddof=ddof, keepdims=True) + 1e-3)
  elif scale == "batch":
    want = centred / (rewards.astype(np.float64).std(ddof=ddof) + 1e-3)
  else:
    want = centred
  np.testing.assert_allclose(got, want.reshape(-1), **TOL)
  np.testing.assert_allclose(got.reshape(3, 4).sum(1), 0.0, atol=1e-5)
  ties = np.asarray(rl.group_advantages(np.ones(4, np.float32), 2, scale=scale, ddof=ddof))
  np.testing.assert_array_equal(ties, 0.0)  # identical rewards: no signal, no division by zero


def test_group_advantages_torch_std_convention():
  rewards = torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7, 0.2], dtype=torch.float64)
  grouped = rewards.view(-1, 3)
  want = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)  # TRL's defaults
  got = rl.group_advantages(rewards.numpy().astype(np.float32), 3)
  np.testing.assert_allclose(np.asarray(got), want.reshape(-1).numpy(), **TOL)


def test_hierarchical_advantages_two_levels():
  rng = np.random.default_rng(9)
  p, m, n = 2, 3, 4
  plan_rewards = rng.uniform(0, 1, p * m).astype(np.float32)
  exec_rewards = rng.uniform(0, 1, (p * m, n)).astype(np.float32)
  plan_adv, exec_adv = rl.hierarchical_advantages(plan_rewards, exec_rewards, num_plans=m, ddof=0)
  plans = plan_rewards.astype(np.float64).reshape(p, m)
  want_plan = (plans - plans.mean(1, keepdims=True)) / (plans.std(1, keepdims=True) + 1e-4)
  np.testing.assert_allclose(np.asarray(plan_adv), want_plan.reshape(-1), **TOL)
  runs = exec_rewards.astype(np.float64)
  want_exec = (runs - runs.mean(1, keepdims=True)) / (runs.std(1, keepdims=True) + 1e-4)
  np.testing.assert_allclose(np.asarray(exec_adv), want_exec, **TOL)

  perturbed = exec_rewards.copy()
  perturbed[4] = rng.uniform(5, 9, n)  # plan 4's continuations only
  plan_adv2, exec_adv2 = rl.hierarchical_advantages(plan_rewards, perturbed, num_plans=m, ddof=0)
  np.testing.assert_array_equal(np.asarray(plan_adv2), np.asarray(plan_adv))
  others = np.arange(p * m) != 4
  np.testing.assert_array_equal(np.asarray(exec_adv2)[others], np.asarray(exec_adv)[others])
  assert not np.allclose(np.asarray(exec_adv2)[4], np.asarray(exec_adv)[4])
  moved_plan = plan_rewards.copy()
  moved_plan[0] += 3.0  # prompt 0's plans move; prompt 1's plan advantages do not
  np.testing.assert_array_equal(np.asarray(rl.hierarchical_advantages(moved_plan, exec_rewards, num_plans=m,
                                                                      ddof=0)[0])[m:], np.asarray(plan_adv)[m:])


def test_token_log_probs_match_torch():
  rng = np.random.default_rng(10)
  logits = rng.normal(0, 2, (2, 5, 37)).astype(np.float32)
  targets = rng.integers(0, 37, (2, 5)).astype(np.int32)
  targets[1, 4] = -100
  got = np.asarray(rl.token_log_probs(logits, targets, temperature=0.7))
  log_probs = torch.log_softmax(torch.tensor(logits, dtype=torch.float64) / 0.7, dim=-1)
  want = log_probs.gather(-1, torch.tensor(np.maximum(targets, 0), dtype=torch.int64)[..., None])[..., 0].numpy()
  want[1, 4] = 0.0
  np.testing.assert_allclose(got, want, **TOL)
  bf16 = rl.token_log_probs(jnp.asarray(logits, jnp.bfloat16), targets)
  assert bf16.dtype == jnp.float32


@pytest.mark.parametrize("head_layout", HEAD_LAYOUTS)
def test_chunked_token_log_probs_match_dense(head_layout):
  rng = np.random.default_rng(11)
  b, t, h, v = 2, 11, 8, 37
  hidden = jnp.asarray(rng.normal(0, 1, (b, t, h)).astype(np.float32))
  head = jnp.asarray(rng.normal(0, 0.5, (h, v) if head_layout == "hv" else (v, h)).astype(np.float32))
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  targets[0, -1] = -100
  weights = jnp.asarray(rng.normal(0, 1, (b, t)).astype(np.float32))
  spec = "bth,hv->btv" if head_layout == "hv" else "bth,vh->btv"

  def dense(hidden, head):
    return rl.token_log_probs(jnp.einsum(spec, hidden, head), targets, temperature=0.8)

  def chunked(hidden, head):
    return rl.chunked_token_log_probs(hidden, head, targets, head_layout=head_layout, temperature=0.8,
                                      chunk_size=4)

  np.testing.assert_allclose(np.asarray(chunked(hidden, head)), np.asarray(dense(hidden, head)), atol=1e-5)
  assert float(chunked(hidden, head)[0, -1]) == 0.0
  grads = [jax.grad(lambda x, w: jnp.sum(f(x, w) * weights), argnums=(0, 1))(hidden, head) for f in (chunked, dense)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def _bad_calls():
  logp, old, ref, adv, mask = _batch()
  return {
      "shape mismatch": lambda: rl.policy_loss(logp, old[:, :-1], adv, mask),
      "mask shape": lambda: rl.policy_loss(logp, old, adv, mask[:, :-1]),
      "float mask": lambda: rl.policy_loss(logp, old, adv, mask.astype(np.float32)),
      "advantages shape": lambda: rl.policy_loss(logp, old, adv[:-1], mask),
      "loss_type": lambda: rl.policy_loss(logp, old, adv, mask, loss_type="ppo"),
      "level": lambda: rl.policy_loss(logp, old, adv, mask, level="sentence"),
      "kl kind": lambda: rl.policy_loss(logp, old, adv, mask, ref_logp=ref, kl="k4"),
      "beta without ref": lambda: rl.policy_loss(logp, old, adv, mask, beta=0.1),
      "ref shape": lambda: rl.policy_loss(logp, old, adv, mask, ref_logp=ref[:3]),
      "eps_low": lambda: rl.policy_loss(logp, old, adv, mask, eps_low=1.5),
      "num_tokens": lambda: rl.policy_loss(logp, old, adv, mask, num_tokens=0),
      "num_sequences array": lambda: rl.policy_loss(logp, old, adv, mask, num_sequences=np.ones(2)),
      "max_len": lambda: rl.policy_loss(logp, old, adv, mask, loss_type="dr_grpo", max_len=0),
      "level weights": lambda: rl.importance_log_weights(logp, old, mask, "seq"),
      "group_size": lambda: rl.group_advantages(np.ones(10, np.float32), 4),
      "scale": lambda: rl.group_advantages(np.ones(8, np.float32), 4, scale="global"),
      "ddof": lambda: rl.group_advantages(np.ones(8, np.float32), 4, ddof=2),
      "int rewards": lambda: rl.group_advantages(np.ones(8, np.int32), 4),
      "exec rows": lambda: rl.hierarchical_advantages(np.ones(6, np.float32), np.ones((4, 3), np.float32),
                                                      num_plans=3),
      "plans per prompt": lambda: rl.hierarchical_advantages(np.ones(6, np.float32), np.ones((6, 3), np.float32),
                                                             num_plans=4),
      "temperature": lambda: rl.token_log_probs(np.zeros((1, 2, 5), np.float32), np.zeros((1, 2), np.int32), 0.0),
      "float targets": lambda: rl.token_log_probs(np.zeros((1, 2, 5), np.float32), np.zeros((1, 2), np.float32)),
      "head size": lambda: rl.chunked_token_log_probs(np.zeros((1, 2, 4), np.float32), np.zeros((3, 5), np.float32),
                                                      np.zeros((1, 2), np.int32)),
      "head layout": lambda: rl.chunked_token_log_probs(np.zeros((1, 2, 4), np.float32),
                                                        np.zeros((4, 5), np.float32), np.zeros((1, 2), np.int32),
                                                        head_layout="vd"),
      "kl shapes": lambda: rl.kl_penalty(np.zeros(3, np.float32), np.zeros(4, np.float32)),
  }


@pytest.mark.parametrize("case", sorted(_bad_calls()))
def test_bad_input_raises(case):
  with pytest.raises(ValueError):
    _bad_calls()[case]()
