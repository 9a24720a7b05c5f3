"""Rewards for RL post-training as pure functions: TempAct's judge-based rewards (Eq. 12-16), ReaDe's format and
content rewards (Eq. 2-4), and a registry of them by name (with the world's verifiable rewards, world.rewards). No
losses, no loops."""

from planx_jax.rewards import reade, tempact
from planx_jax.rewards.registry import get_reward, register_reward, reward_names, unregister_reward

__all__ = ["get_reward", "reade", "register_reward", "reward_names", "tempact", "unregister_reward"]
