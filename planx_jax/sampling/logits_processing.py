"""Next-token sampling from fp32 logits [B, V]: allowed-token mask, temperature, top-k, top-p, greedy.

Pure functions of arrays; nothing here knows the model, the KV cache or the plan grammar.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

# An allowed set: a boolean [B, V] / [V] mask, or a half-open id range (lo, hi).
Allowed = jax.Array | tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How tokens are drawn. Plan-X samples the planner at temperature 0.9 with neither top-k nor top-p.

  Attributes:
    temperature: logits are divided by it; 0 means greedy (argmax).
    top_k: keep the k most likely tokens; 0 turns it off.
    top_p: keep the smallest most-likely set with probability >= top_p (nucleus); 1.0 turns it off.
    max_new_tokens: tokens `generate` writes per row (plans take the grammar's length instead).
  """

  temperature: float = 0.9
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 256

  def __post_init__(self):
    if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature must be a finite number >= 0 (0 = greedy), "
                       f"got {self.temperature!r}")
    if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
    if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
    if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def apply_allowed(logits: jax.Array, allowed: Allowed) -> jax.Array:
  """-inf outside the allowed set. logits [B, V]; allowed: bool [B, V] or [V], or an id range (lo, hi)."""
  if allowed is None:
    return logits
  if isinstance(allowed, tuple):
    lo, hi = allowed
    vocab = logits.shape[-1]
    if not 0 <= lo < hi <= vocab:
      raise ValueError(f"allowed id range {allowed} must satisfy 0 <= lo < hi <= vocab size {vocab}")
    ids = jnp.arange(vocab)
    mask = (ids >= lo) & (ids < hi)  # [V]
  else:
    mask = jnp.asarray(allowed)
    if mask.dtype != jnp.bool_ or mask.shape[-1] != logits.shape[-1]:
      raise ValueError(f"allowed mask must be bool [..., {logits.shape[-1]}], got {mask.dtype} {mask.shape}")
  return jnp.where(mask, logits, -jnp.inf)


def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
  """logits / temperature (temperature > 0; greedy decoding skips this)."""
  return logits / jnp.asarray(temperature, jnp.float32)


def apply_top_k(logits: jax.Array, top_k: int) -> jax.Array:
  """Keep tokens whose logit is >= the k-th largest (ties at the k-th are kept); top_k=0 is a no-op."""
  if top_k == 0:
    return logits
  if top_k > logits.shape[-1]:
    raise ValueError(f"top_k={top_k} exceeds the vocabulary size {logits.shape[-1]}")
  kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [B, 1]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def apply_top_p(logits: jax.Array, top_p) -> jax.Array:
  """Nucleus filter: keep the most likely tokens until their probability reaches top_p.

  A token (in descending-logit order) is admitted while the probability of the tokens before it is
  < top_p, so the most likely token is always kept; every token tied with the last admitted one is
  kept too. Tokens already at -inf are never admitted. `top_p` may be a traced scalar.
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)  # [B, V] descending
  probs = jax.nn.softmax(sorted_logits, axis=-1)  # [B, V]
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
  admitted = (mass_before < top_p) & jnp.isfinite(sorted_logits)
  admitted = admitted.at[..., 0].set(True)
  num_admitted = jnp.sum(admitted, axis=-1, keepdims=True)  # [B, 1] (a prefix: mass_before is monotone)
  cutoff = jnp.take_along_axis(sorted_logits, num_admitted - 1, axis=-1)  # [B, 1]
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def filter_logits(logits: jax.Array, temperature, top_k: int = 0, top_p=1.0, allowed: Allowed = None) -> jax.Array:
  """The logits `sample_token` draws from: masked, temperature-scaled, top-k and top-p filtered, fp32.

  Order as transformers' default warpers: allowed mask -> temperature -> top-k -> top-p (on the
  top-k-renormalised distribution). Ties at a top-k / top-p boundary are all kept: a token survives
  iff its logit is >= the logit of the last token the rule admits, so the result never depends on
  token order. `top_k` must be a Python int (it sets a shape); `temperature` (> 0) and `top_p` may be
  traced. A Python `top_p == 1.0` skips the sort.
  """
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"filter_logits needs temperature > 0 (greedy decoding does not filter), got {temperature}")
  logits = apply_allowed(logits.astype(jnp.float32), allowed)
  logits = apply_temperature(logits, temperature)
  logits = apply_top_k(logits, top_k)
  if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
    logits = apply_top_p(logits, top_p)
  return logits


def sample_token(rng: jax.Array, logits: jax.Array, temperature, top_k: int = 0, top_p=1.0,
                 allowed: Allowed = None) -> jax.Array:
  """One token id per row. logits [B, V] fp32 -> int32 [B].

  temperature == 0 (a Python number) is greedy: the argmax of the allowed logits (lowest id among
  ties); top-k / top-p cannot change it. A traced temperature selects greedy where it equals 0.
  Each row needs at least one allowed token.
  """
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k must be a Python int >= 0, got {top_k!r}")
  if logits.ndim != 2:
    raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
  masked = apply_allowed(logits.astype(jnp.float32), allowed)
  greedy = jnp.argmax(masked, axis=-1).astype(jnp.int32)  # [B]
  if isinstance(temperature, (int, float)):
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
      return greedy
  temperature = jnp.asarray(temperature, jnp.float32)
  safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
  filtered = filter_logits(masked, safe_temperature, top_k, top_p)
  sampled = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)  # [B]
  return jnp.where(temperature > 0, sampled, greedy)
