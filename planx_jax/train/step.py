"""The jittable train step shared by every stage: microbatch gradient accumulation over the trainable subset of
the params, global-norm clipping + AdamW (in the optimizer), and a non-finite guard that skips the update and
counts it. Not the loss (train/tasks) and not the jit / shardings (experiment.py)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from planx_jax.train.state import TrainState, step_key


def partition(params, mask) -> tuple[Any, Any]:
  """(trainable, frozen) trees: the same structure with None where a leaf belongs to the other part."""
  trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
  frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
  return trainable, frozen


def combine(trainable, frozen):
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None)


def split_microbatches(batch: dict, microbatches: int, constrain: Callable | None = None) -> dict:
  """[B, ...] -> [M, B / M, ...], microbatch m holding rows m, m + M, ...: every data shard keeps B / (D M) rows
  of each microbatch, so no rows move between devices."""
  def split(x):
    x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])  # [B / M, M, ...]
    x = jnp.swapaxes(x, 0, 1)  # [M, B / M, ...]
    return x if constrain is None else constrain(x)

  return jax.tree.map(split, batch)


def make_train_step(task, optimizer: optax.GradientTransformation, schedule: optax.Schedule, mask, *,
                    microbatches: int = 1, constrain_micro: Callable | None = None,
                    constrain_grads: Callable | None = None) -> Callable:
  """(state, batch) -> (state, metrics) for `task` (a `train.tasks.Task`).

  The loss of each microbatch is already normalised by whole-batch counts (`task.normalizers`), so the sum over
  microbatches of losses and gradients is exactly the whole-batch loss and gradient. A step whose loss or
  gradient norm is not finite leaves params and optimizer state untouched and increments `state.skipped`.
  """
  def train_step(state: TrainState, batch: dict):
    key = step_key(state)
    normalizers = task.normalizers(batch)
    trainable, frozen = partition(state.params, mask)

    def loss_fn(params_t, micro, rng):
      return task.loss(combine(params_t, frozen), micro, rng, state.step, normalizers)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
      (loss, metrics), grads = grad_fn(trainable, batch, jax.random.fold_in(key, 0))
    else:
      micro = split_microbatches(batch, microbatches, constrain_micro)

      def accumulate(carry, xs):
        index, mb = xs
        (loss_m, metrics_m), grads_m = grad_fn(trainable, mb, jax.random.fold_in(key, index))
        acc_grads, acc_loss, acc_metrics = carry
        acc_grads = jax.tree.map(jnp.add, acc_grads, grads_m)
        if constrain_grads is not None:
          acc_grads = constrain_grads(acc_grads)
        return (acc_grads, acc_loss + loss_m, jax.tree.map(jnp.add, acc_metrics, metrics_m)), None

      zero_grads = jax.tree.map(jnp.zeros_like, trainable)
      metrics_shape = jax.eval_shape(lambda: grad_fn(trainable, jax.tree.map(lambda x: x[0], micro), key)[0][1])
      zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
      (grads, loss, metrics), _ = jax.lax.scan(
          accumulate, (zero_grads, jnp.zeros((), jnp.float32), zero_metrics),
          (jnp.arange(microbatches), micro))
    if constrain_grads is not None:
      grads = constrain_grads(grads)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    new_params = combine(jax.tree.map(keep, new_trainable, trainable), frozen)
    new_opt_state = jax.tree.map(keep, new_opt_state, state.opt_state)
    lr = schedule(state.step - state.skipped)  # optax's count: the updates applied so far
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state,
                              skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": jnp.asarray(lr, jnp.float32),
               "skipped": (~finite).astype(jnp.int32), **metrics}
    return new_state, metrics

  return train_step
