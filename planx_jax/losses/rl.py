"""RL objectives for the planner as pure functions: GRPO / TempAct Eq. 8 advantages, token log-probs, KL estimators,
token / GSPO / GSPO-token importance weights and TRL's clipped policy loss. Not rollouts, rewards or the DiT's SDE.

Everything is fp32 inside whatever the input dtype; bad arguments raise ValueError before any trace. Rows of a
batch are completions; `mask` marks each completion's counted tokens (bool or integer, nonzero = counted).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.checks import describe, require_count_mask, require_size
from planx_jax.losses.lm import check_hidden_and_head, project_logits

ADVANTAGE_SCALES = ("group", "batch", "none")
KL_KINDS = ("k1", "k2", "squared", "k3")  # "squared" is another name for k2
IMPORTANCE_LEVELS = ("token", "sequence", "sequence_token")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards, group_size: int, *, scale: str = "group", eps: float = 1e-4, ddof: int = 1):
  """Group-relative advantages (TempAct Eq. 3, ReaDe Eq. 5): A = (r - group mean) / (std + eps).

  Rows g * G .. g * G + G - 1 are the G completions of prompt g. The centring is always the group mean; the
  scale is the group's std ("group", GRPO), the std of all B rewards ("batch", TRL's scale_rewards="batch") or
  1 ("none", Dr.GRPO: centred only, eps unused). The std divides the squared deviations by max(n - ddof, 1), so
  a single completion (G = 1, or B = 1 for "batch") has std 0. Defaults follow TRL (eps 1e-4, ddof 1); tunix
  uses eps 1e-6, flow_grpo ddof 0.

  Args:
    rewards: [B] float.
    group_size: G, a positive divisor of B.
    scale: one of ADVANTAGE_SCALES.
    eps: added to the std, >= 0.
    ddof: 0 (population std) or 1 (sample std).

  Returns:
    [B] fp32 advantages.
  """
  if getattr(rewards, "ndim", None) != 1 or not jnp.issubdtype(rewards.dtype, jnp.floating):
    raise ValueError(f"rewards must be a float [B] array, got {describe(rewards)}")
  require_size("group_size", group_size)
  if rewards.shape[0] % group_size:
    raise ValueError(f"group_size {group_size} does not divide the {rewards.shape[0]} rewards")
  _check_scale_options(scale, eps, ddof)
  rewards = jnp.asarray(rewards).astype(jnp.float32)
  grouped = rewards.reshape(-1, group_size)  # [B / G, G]
  centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)  # [B / G, G]
  if scale == "none":
    return centred.reshape(-1)
  if scale == "group":
    std = _std(grouped, axis=1, ddof=ddof)[:, None]  # [B / G, 1]
  else:
    std = _std(rewards, axis=0, ddof=ddof)
  return (centred / (std + eps)).reshape(-1)


def hierarchical_advantages(plan_rewards, exec_rewards, *, num_plans: int, scale: str = "group", eps: float = 1e-4,
                            ddof: int = 1):
  """TempAct's two-level advantages (Eq. 8): plans against the M plans of their prompt, continuations against
  the N continuations of their plan (which share its context and step prompt).

  Args:
    plan_rewards: [P * M] float, R_plan for the M plans of each of P prompts (a prompt's plans contiguous).
    exec_rewards: [P * M, N] float, R_exec of each plan's N continuations (row m belongs to plan m).
    num_plans: M.
    scale, eps, ddof: as in `group_advantages`, for both levels ("batch" uses the std of that level's rewards).

  Returns:
    plan_adv [P * M] and exec_adv [P * M, N], fp32.
  """
  if getattr(plan_rewards, "ndim", None) != 1:
    raise ValueError(f"plan_rewards must be a float [P * M] array, got {describe(plan_rewards)}")
  if getattr(exec_rewards, "ndim", None) != 2 or not jnp.issubdtype(exec_rewards.dtype, jnp.floating):
    raise ValueError(f"exec_rewards must be a float [P * M, N] array, got {describe(exec_rewards)}")
  if exec_rewards.shape[0] != plan_rewards.shape[0]:
    raise ValueError(f"exec_rewards has {exec_rewards.shape[0]} rows but there are {plan_rewards.shape[0]} plans "
                     "(one row of continuations per plan)")
  plan_adv = group_advantages(plan_rewards, num_plans, scale=scale, eps=eps, ddof=ddof)
  n = exec_rewards.shape[1]
  exec_adv = group_advantages(jnp.asarray(exec_rewards).reshape(-1), n, scale=scale, eps=eps, ddof=ddof)
  return plan_adv, exec_adv.reshape(exec_rewards.shape)


def token_log_probs(logits, targets, temperature: float = 1.0):
  """log softmax(logits / temperature)[target] per position, fp32.

  Args:
    logits: [B, T, V] float (any dtype; upcast before the division).
    targets: [B, T] integer ids; positions whose id is outside [0, V) (padding such as -100) give 0.
    temperature: the sampling temperature (> 0), so the log-probs are those of the sampling distribution.

  Returns:
    [B, T] fp32 log-probs.
  """
  if getattr(logits, "ndim", None) != 3 or not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be a float [B, T, V] array, got {describe(logits)}")
  _check_ids(targets, tuple(logits.shape[:2]))
  _check_temperature(temperature)
  vocab = logits.shape[-1]
  targets = jnp.asarray(targets)
  logits = jnp.asarray(logits).astype(jnp.float32) / temperature
  return _gather_log_prob(logits, targets, vocab)


def chunked_token_log_probs(hidden, head, targets, *, head_layout: str = "hv", temperature: float = 1.0,
                            chunk_size: int = 512):
  """`token_log_probs(hidden @ head, targets, temperature)` without materialising the [B, T, V] logits.

  The sequence is padded to a multiple of `chunk_size` and scanned; each chunk's fp32 logits [B, chunk, V]
  (from `hidden` and `head` in the compute dtype, fp32 accumulation) are formed under `jax.checkpoint`, so the
  backward pass recomputes them instead of storing them.

  Args:
    hidden: [B, T, H] final hidden states; their dtype is the compute dtype.
    head: [H, V] for head_layout="hv" (an lm_head kernel) or [V, H] for "vh" (a tied embedding table); cast to
      `hidden`'s dtype, as `Planner.logits` does.
    targets: [B, T] integer ids; ids outside [0, V) give 0.
    head_layout: one of losses.lm.HEAD_LAYOUTS ("hv" or "vh").
    temperature: > 0.
    chunk_size: sequence positions per chunk (clamped to T).
  """
  vocab = check_hidden_and_head(hidden, head, head_layout)
  b, t, h = hidden.shape
  if t < 1:
    raise ValueError(f"hidden has an empty sequence axis: {tuple(hidden.shape)}")
  _check_ids(targets, (b, t))
  _check_temperature(temperature)
  require_size("chunk_size", chunk_size)
  targets = jnp.asarray(targets)
  hidden = jnp.asarray(hidden)
  head = jnp.asarray(head).astype(hidden.dtype)
  chunk = min(chunk_size, t)
  num_chunks = math.ceil(t / chunk)
  pad = num_chunks * chunk - t
  safe = jnp.pad(jnp.clip(targets, 0, vocab - 1).astype(jnp.int32), ((0, 0), (0, pad)))  # [B, Tp]
  hidden_chunks = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, num_chunks, chunk, h)
  hidden_chunks = jnp.swapaxes(hidden_chunks, 0, 1)  # [C, B, chunk, H]
  target_chunks = jnp.swapaxes(safe.reshape(b, num_chunks, chunk), 0, 1)  # [C, B, chunk]

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_log_probs(hidden_c, head, targets_c):
    logits = project_logits(hidden_c, head, head_layout) / temperature  # [B, chunk, V] fp32
    picked = jnp.take_along_axis(logits, targets_c[..., None], axis=-1)[..., 0]  # [B, chunk]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  def step(carry, xs):
    return carry, chunk_log_probs(xs[0], head, xs[1])

  _, logp = jax.lax.scan(step, None, (hidden_chunks, target_chunks))  # [C, B, chunk]
  logp = jnp.swapaxes(logp, 0, 1).reshape(b, num_chunks * chunk)[:, :t]  # [B, T]
  return jnp.where((targets >= 0) & (targets < vocab), logp, 0.0)


def kl_penalty(logp, ref_logp, kind: str = "k3"):
  """Per-token estimate of KL(pi_theta || pi_ref) from the sampled tokens' log-probs (Schulman's estimators).

  "k1": logp - ref_logp (unbiased, can be negative; tunix's default). "k2" / "squared": 0.5 (logp - ref_logp)^2.
  "k3": exp(ref - logp) - (ref - logp) - 1 (unbiased and >= 0): DeepSeekMath's GRPO and TRL, the D_KL of
  ReaDe Eq. 6 in that form. TempAct (beta_p D_KL, Table 6: 5e-4) does not name its estimator.

  Returns:
    fp32, the shape of `logp`.
  """
  if kind not in KL_KINDS:
    raise ValueError(f"kl kind must be one of {KL_KINDS}, got {kind!r}")
  _check_float_pair("logp", logp, "ref_logp", ref_logp)
  logp, ref_logp = jnp.asarray(logp).astype(jnp.float32), jnp.asarray(ref_logp).astype(jnp.float32)
  if kind == "k1":
    return logp - ref_logp
  if kind in ("k2", "squared"):
    return 0.5 * jnp.square(logp - ref_logp)
  log_ref_ratio = ref_logp - logp
  return jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0


def importance_log_weights(logp, old_logp, mask, level: str = "token", log_ratio_clip: float | None = 20.0):
  """Log importance weights [B, T] of the current policy against the sampling policy.

  "token" (PPO / GRPO): logp - old_logp per token. "sequence" (GSPO, TempAct Eq. 9): the masked mean of the
  token log-ratios of each row, i.e. the log of the length-normalised sequence ratio, broadcast over the row.
  "sequence_token" (GSPO-token): logp - sg(logp) + sg(sequence value): the sequence's value with a per-token
  gradient. The token log-ratio is clamped to +-log_ratio_clip first (None: no clamp; a clamped token carries
  no gradient). Uncounted positions get 0 (the sequence value is taken over counted ones; an empty row gets 0).
  """
  if level not in IMPORTANCE_LEVELS:
    raise ValueError(f"level must be one of {IMPORTANCE_LEVELS}, got {level!r}")
  _check_float_pair("logp", logp, "old_logp", old_logp, ndim=2)
  require_count_mask("mask", mask, tuple(logp.shape))
  _check_log_ratio_clip(log_ratio_clip)
  logp, old_logp, counted = _sanitise(logp, old_logp, mask)
  weights = _log_weights(logp, old_logp, counted, level, log_ratio_clip)
  return jnp.where(counted, jnp.broadcast_to(weights, logp.shape), 0.0)


def policy_loss(logp, old_logp, advantages, mask, *, level: str = "token", loss_type: str = "grpo",
                eps_low: float = 0.2, eps_high: float = 0.2, ref_logp=None, beta: float = 0.0, kl: str = "k3",
                advantage_clip: float | None = None, log_ratio_clip: float | None = 20.0, max_len: int | None = None,
                num_sequences=None, num_tokens=None):
  """Clipped policy-gradient loss of GRPO / DAPO / Dr.GRPO / GSPO (TempAct Eq. 4 and 10, ReaDe Eq. 6) as TRL
  computes it, with its per-token loss and aggregations.

  Per token: w = exp(importance_log_weights(level)), A = advantages (clipped to +-advantage_clip when given),
  loss_t = -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A) + beta * KL_t (KL_t = kl_penalty(logp, ref_logp, kl)).
  GSPO is level="sequence" (with loss_type="grpo", Eq. 10's mean over the group's sequences); GSPO-token is
  level="sequence_token". Aggregation over counted tokens (S = the masked sum of loss_t, n_i = counted tokens of
  row i):
    grpo:    sum_i (sum_t loss_it / max(n_i, 1)) / num_sequences   (num_sequences defaults to B)
    bnpo:    S / max(num_tokens, 1)                                (num_tokens defaults to this batch's count)
    dr_grpo: S / (num_sequences * max_len)                         (max_len defaults to T)
    dapo:    S / max(num_tokens, 1), num_tokens meant to be the counted tokens of the whole generation batch
             (TRL's num_items_in_batch); without it this is bnpo.
  For microbatches, pass the whole batch's num_sequences (its rows) and num_tokens (its counted tokens) to every
  microbatch: the microbatch losses (and metrics) then sum to the whole-batch values for every loss_type. (TRL's
  bnpo instead averages each microbatch's own token mean: leave num_tokens unset and average the losses.)

  Args:
    logp, old_logp: [B, T] float log-probs of the sampled tokens under the current / sampling policy.
    advantages: [B] (one per completion) or [B, T] (per token) float.
    mask: [B, T] bool or integer, nonzero = counted.
    level: one of IMPORTANCE_LEVELS.  loss_type: one of LOSS_TYPES.
    eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] (DAPO's asymmetric clip), eps_low in [0, 1].
    ref_logp: [B, T] reference-policy log-probs; required when beta > 0, else only reported.
    beta: KL weight >= 0.  kl: one of KL_KINDS.
    advantage_clip: clip advantages to [-advantage_clip, advantage_clip] (TempAct Table 6), or None.
    log_ratio_clip: clamp of the token log-ratio before exp, or None.
    max_len: dr_grpo's length constant (the maximum completion length).
    num_sequences, num_tokens: whole-batch normalisers (python numbers or scalar arrays), see above.

  Returns:
    (loss [] fp32, metrics dict of [] fp32): "ratio_mean", "clip_low_frac" (w < 1 - eps_low with A < 0),
    "clip_high_frac" (w > 1 + eps_high with A > 0), "clip_frac" (either), and "kl_mean" when ref_logp is given.
    Token-shaped quantities are masked sums / num_tokens; with level="sequence" and [B] advantages the ratio and
    clip metrics are per-sequence sums / num_sequences (as TRL counts them).
  """
  _check_policy_args(logp, old_logp, advantages, mask, level, loss_type, eps_low, eps_high, ref_logp, beta, kl,
                     advantage_clip, log_ratio_clip, max_len, num_sequences, num_tokens)
  b, t = logp.shape
  logp, old_logp, counted = _sanitise(logp, old_logp, mask)
  row_tokens = jnp.sum(counted, axis=1, dtype=jnp.float32)  # [B]
  n_seq = jnp.asarray(b if num_sequences is None else num_sequences, jnp.float32)
  n_tok = jnp.maximum(jnp.sum(row_tokens) if num_tokens is None else jnp.asarray(num_tokens, jnp.float32), 1.0)

  adv = jnp.asarray(advantages).astype(jnp.float32)
  adv = adv[:, None] if adv.ndim == 1 else adv  # [B, 1] or [B, T]
  if advantage_clip is not None:
    adv = jnp.clip(adv, -advantage_clip, advantage_clip)
  log_w = _log_weights(logp, old_logp, counted, level, log_ratio_clip)  # [B, 1] for "sequence", else [B, T]
  ratio = jnp.exp(log_w)
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  per_token = -jnp.minimum(ratio * adv, clipped * adv)  # [B, T]
  kl_t = None
  if ref_logp is not None:
    ref = jnp.where(counted, jnp.asarray(ref_logp).astype(jnp.float32), 0.0)
    kl_t = kl_penalty(logp, ref, kl)  # [B, T]
    if beta:
      per_token = per_token + beta * kl_t

  row_sums = jnp.sum(jnp.where(counted, per_token, 0.0), axis=1)  # [B]
  if loss_type == "grpo":
    loss = jnp.sum(row_sums / jnp.maximum(row_tokens, 1.0)) / n_seq
  elif loss_type == "dr_grpo":
    loss = jnp.sum(row_sums) / (n_seq * (t if max_len is None else max_len))
  else:
    loss = jnp.sum(row_sums) / n_tok

  low = (ratio < 1.0 - eps_low) & (adv < 0)
  high = (ratio > 1.0 + eps_high) & (adv > 0)
  if level == "sequence" and adv.shape[1] == 1:
    def mean(x):  # [B, 1]: one value per sequence
      return jnp.sum(x.astype(jnp.float32)) / n_seq
  else:
    def mean(x):  # one value per counted token
      return jnp.sum(jnp.where(counted, x.astype(jnp.float32), 0.0)) / n_tok
  metrics = {"ratio_mean": mean(ratio), "clip_low_frac": mean(low), "clip_high_frac": mean(high),
             "clip_frac": mean(low | high)}
  if kl_t is not None:
    metrics["kl_mean"] = jnp.sum(jnp.where(counted, kl_t, 0.0)) / n_tok
  return loss, metrics


def _log_weights(logp, old_logp, counted, level, log_ratio_clip):
  """[B, 1] for "sequence", [B, T] otherwise; inputs already sanitised (0 at uncounted positions)."""
  log_ratio = logp - old_logp  # [B, T]
  if log_ratio_clip is not None:
    log_ratio = jnp.clip(log_ratio, -log_ratio_clip, log_ratio_clip)
  if level == "token":
    return log_ratio
  row_tokens = jnp.maximum(jnp.sum(counted, axis=1, dtype=jnp.float32), 1.0)  # [B]
  sequence = (jnp.sum(log_ratio, axis=1) / row_tokens)[:, None]  # [B, 1]
  if level == "sequence":
    return sequence
  return logp - jax.lax.stop_gradient(logp) + jax.lax.stop_gradient(sequence)


def _sanitise(logp, old_logp, mask):
  """fp32 log-probs zeroed at uncounted positions (so padding garbage never reaches a value or gradient)."""
  counted = jnp.asarray(mask) != 0
  logp = jnp.where(counted, jnp.asarray(logp).astype(jnp.float32), 0.0)
  old_logp = jnp.where(counted, jnp.asarray(old_logp).astype(jnp.float32), 0.0)
  return logp, old_logp, counted


def _gather_log_prob(logits, targets, vocab):
  safe = jnp.clip(targets, 0, vocab - 1).astype(jnp.int32)
  picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]  # [B, T]
  logp = picked - jax.nn.logsumexp(logits, axis=-1)
  return jnp.where((targets >= 0) & (targets < vocab), logp, 0.0)


def _std(x, axis, ddof):
  count = x.shape[axis]
  centred = x - jnp.mean(x, axis=axis, keepdims=True)
  return jnp.sqrt(jnp.sum(jnp.square(centred), axis=axis) / max(count - ddof, 1))


def _check_scale_options(scale, eps, ddof):
  if scale not in ADVANTAGE_SCALES:
    raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
  _check_nonnegative("eps", eps)
  if isinstance(ddof, bool) or ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")


def _check_ids(targets, shape):
  if getattr(targets, "ndim", None) != 2 or not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be an integer [B, T] array, got {describe(targets)}")
  if tuple(targets.shape) != shape:
    raise ValueError(f"targets has shape {tuple(targets.shape)}, expected {shape}")


def _check_float_pair(name, x, other_name, other, ndim=None):
  for n, a in ((name, x), (other_name, other)):
    if not hasattr(a, "shape") or not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(f"{n} must be a float array, got {describe(a)}")
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"{name} must be a float [B, T] array, got {describe(x)}")
  if tuple(other.shape) != tuple(x.shape):
    raise ValueError(f"{other_name} has shape {tuple(other.shape)}, expected {tuple(x.shape)} (the shape of {name})")


def _check_temperature(temperature):
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
    raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def _check_nonnegative(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_log_ratio_clip(log_ratio_clip):
  if log_ratio_clip is not None:
    _check_nonnegative("log_ratio_clip", log_ratio_clip)
    if log_ratio_clip == 0:
      raise ValueError("log_ratio_clip must be positive (or None for no clamp), got 0")


def _check_normaliser(name, value):
  """A python number > 0 or a scalar array (traced values cannot be checked for sign)."""
  if value is None:
    return
  if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
    if not value > 0 or not math.isfinite(value):
      raise ValueError(f"{name} must be positive, got {value!r}")
    return
  if getattr(value, "shape", None) != ():
    raise ValueError(f"{name} must be a positive number or a scalar array, got {describe(value)}")


def _check_policy_args(logp, old_logp, advantages, mask, level, loss_type, eps_low, eps_high, ref_logp, beta, kl,
                       advantage_clip, log_ratio_clip, max_len, num_sequences, num_tokens):
  if level not in IMPORTANCE_LEVELS:
    raise ValueError(f"level must be one of {IMPORTANCE_LEVELS}, got {level!r}")
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
  if kl not in KL_KINDS:
    raise ValueError(f"kl must be one of {KL_KINDS}, got {kl!r}")
  _check_float_pair("logp", logp, "old_logp", old_logp, ndim=2)
  shape = tuple(logp.shape)
  require_count_mask("mask", mask, shape)
  if not hasattr(advantages, "shape") or not jnp.issubdtype(advantages.dtype, jnp.floating):
    raise ValueError(f"advantages must be a float [B] or [B, T] array, got {describe(advantages)}")
  if tuple(advantages.shape) not in (shape[:1], shape):
    raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected {shape[:1]} or {shape}")
  if ref_logp is not None:
    _check_float_pair("logp", logp, "ref_logp", ref_logp)
  _check_nonnegative("beta", beta)
  if beta and ref_logp is None:
    raise ValueError(f"beta={beta} needs ref_logp (the reference policy's log-probs)")
  _check_nonnegative("eps_low", eps_low)
  _check_nonnegative("eps_high", eps_high)
  if eps_low > 1:
    raise ValueError(f"eps_low must be in [0, 1] (the lower clip bound is 1 - eps_low), got {eps_low!r}")
  if advantage_clip is not None:
    _check_nonnegative("advantage_clip", advantage_clip)
  _check_log_ratio_clip(log_ratio_clip)
  if max_len is not None:
    require_size("max_len", max_len)
  _check_normaliser("num_sequences", num_sequences)
  _check_normaliser("num_tokens", num_tokens)
