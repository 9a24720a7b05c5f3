"""AdamW with warmup + cosine / constant learning-rate schedules and global-norm clipping, from the experiment
config. Not the choice of trainable params (see `step.py`)."""

import jax
import optax

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine decay to `lr * min_lr_ratio` at `num_steps`, or
  constant."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
  if cfg.lr <= 0:
    raise ValueError(f"optimizer.lr must be positive, got {cfg.lr}")
  if cfg.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps must be >= 0, got {cfg.warmup_steps}")
  if not 0.0 <= cfg.min_lr_ratio <= 1.0:
    raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
  warmup = int(cfg.warmup_steps)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.lr)
  else:
    after = optax.cosine_decay_schedule(cfg.lr, max(num_steps - warmup, 1), alpha=cfg.min_lr_ratio)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def adamw(cfg, num_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm(clip_norm) (skipped when clip_norm <= 0) then AdamW with the schedule; no weight decay
  on biases and norm scales (leaves named "bias" or "scale", whatever their stacked-layer rank)."""
  schedule = learning_rate_schedule(cfg, num_steps)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)


def decay_mask(params):
  """True on the leaves weight decay applies to."""
  def decays(path, _):
    last = getattr(path[-1], "key", None) if path else None
    return last not in ("bias", "scale")

  return jax.tree_util.tree_map_with_path(decays, params)
