"""A registry of reward functions by name, so RL configs can name a reward and users can add their own.

Names map to plain callables; each reward keeps its own signature (see its module). Not a judge and not the loops.
"""

from collections.abc import Callable

_REWARDS: dict[str, Callable] = {}


def register_reward(name: str, fn: Callable | None = None, *, overwrite: bool = False):
  """Registers `fn` under `name` and returns it; without `fn`, returns a decorator that does so. A name already
  taken is a ValueError unless overwrite=True."""
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"a reward name must be a non-empty string, got {name!r}")

  def add(reward: Callable) -> Callable:
    if not callable(reward):
      raise ValueError(f"reward {name!r} must be callable, got {type(reward).__name__}")
    if name in _REWARDS and not overwrite:
      raise ValueError(f"a reward named {name!r} is already registered ({_describe(_REWARDS[name])}); "
                       "pass overwrite=True to replace it")
    _REWARDS[name] = reward
    return reward

  return add if fn is None else add(fn)


def get_reward(name: str) -> Callable:
  """The reward registered under `name`; ValueError listing the registered names otherwise."""
  if name not in _REWARDS:
    raise ValueError(f"unknown reward {name!r}; registered: {list(reward_names())}")
  return _REWARDS[name]


def unregister_reward(name: str) -> Callable:
  """Removes the reward registered under `name` and returns it; ValueError if there is none."""
  fn = get_reward(name)
  del _REWARDS[name]
  return fn


def reward_names() -> tuple[str, ...]:
  """The registered names, sorted."""
  return tuple(sorted(_REWARDS))


def _describe(fn: Callable) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _register_builtins() -> None:
  from planx_jax.rewards import reade, tempact
  from planx_jax.world import rewards as world

  builtins = {
      "tempact_judge": tempact.judge_reward, "tempact_video": tempact.video_reward,
      "tempact_plan": tempact.plan_reward, "tempact_step": tempact.step_reward, "tempact_exec": tempact.exec_reward,
      "reade_format": reade.format_reward, "reade_content": reade.content_reward,
      "world_video": world.video_reward, "world_plan": world.plan_reward,
  }
  for name, fn in builtins.items():
    register_reward(name, fn)


_register_builtins()

__all__ = ["get_reward", "register_reward", "reward_names", "unregister_reward"]
