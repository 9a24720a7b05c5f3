"""The train state: one pytree (step, params, optimizer state, RNG key data, skipped-step count) that jit donates,
Orbax saves and `parallel.rules` shards. Not the step function (see `step.py`)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32, the number of completed steps (skipped ones included)
  params: Any  # the full param tree, trainable and frozen
  opt_state: Any  # optax state over the trainable subset (see `step.trainable_subset`)
  rng: jax.Array  # [2] uint32 key data (`jax.random.key_data`), split once per step
  skipped: jax.Array  # [] int32, steps whose loss or gradients were not finite (state left untouched)


def new_state(params, opt_state, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    rng=jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
                    skipped=jnp.zeros((), jnp.int32))


def step_key(state: TrainState) -> jax.Array:
  """This step's PRNG key: the state key folded with the step, so a resumed run draws the same numbers."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl="threefry2x32"), state.step)
