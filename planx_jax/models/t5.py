"""The umT5 text encoder in Flax Linen (transformers `UMT5EncoderModel`) and Wan's padded text embeddings.

Pre-norm layers [T5 RMS norm -> unscaled attention with a per-layer relative position
bias and the padding mask -> T5 RMS norm -> gated-GELU FFN], then a final norm; `encode`
trims each sequence to its mask length and zero-pads to `text_len` rows, as Wan expects.
Tokenization, prompt cleaning and checkpoint conversion live elsewhere.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.models.layers import Einsum, dtype_of
from planx_jax.models.t5_config import T5Config

_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of every (query, key) pair: [length, length] int32 in [0, num_buckets).

  Half the buckets hold keys after the query. Within a direction, distances below
  `num_buckets // 4` get a bucket each; larger ones share log-spaced buckets up to
  `max_distance`, past which all fall in the last. The log step runs in fp32 in the
  same order as transformers, so distances on a bucket edge (16, 32, 64 with the
  defaults) land where transformers puts them.
  """
  relative = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query, [L, L]
  per_direction = num_buckets // 2
  max_exact = per_direction // 2
  distance = np.abs(relative)
  is_exact = distance < max_exact
  with np.errstate(divide="ignore"):
    log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact))
  log_ratio = log_ratio * np.float32(per_direction - max_exact)
  far = max_exact + np.where(is_exact, 0.0, log_ratio).astype(np.int64)
  far = np.minimum(far, per_direction - 1)
  buckets = np.where(relative > 0, per_direction, 0) + np.where(is_exact, distance, far)
  return buckets.astype(np.int32)


def clamp_fp16(x: jax.Array) -> jax.Array:
  """transformers' fp16 guard after each sub-layer: clip to +-65504, or to +-(65504 - 1000) once any value of
  the batch is inf. A no-op for other dtypes."""
  if x.dtype != jnp.float16:
    return x
  largest = float(jnp.finfo(jnp.float16).max)
  limit = jnp.where(jnp.isinf(x).any(), largest - 1000, largest).astype(x.dtype)
  return jnp.clip(x, -limit, limit)


class T5LayerNorm(nn.Module):
  """RMS norm without mean subtraction or bias: x * rsqrt(mean(x^2) + eps) in fp32, then times `scale`.

  As transformers: the normalised value is cast to the scale's dtype first when the
  params are fp16/bf16 (else the product is fp32); the result is cast to the compute dtype.
  """

  eps: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if jnp.dtype(self.param_dtype) in _HALF:
      normed = normed.astype(self.param_dtype)
    return (scale * normed).astype(self.dtype)


class SelfAttention(nn.Module):
  """Bidirectional attention with no 1/sqrt(d_kv) scaling, plus this layer's relative position bias."""

  config: T5Config

  @nn.compact
  def __call__(self, x, buckets, mask_bias):
    """x [B, L, D]; buckets [L, L] int32; mask_bias [B, L] fp32 (0 for tokens, a large negative for padding)."""
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv

    # Mesh-TensorFlow init scales: the missing 1/sqrt(d_kv) is folded into q's.
    def proj(name, std):
      return Einsum("bld,dnh->blnh", (d, n, h), ("embed", "heads", "head_dim"), dtype=dtype, param_dtype=pdtype,
                    kernel_init=nn.initializers.normal(std), name=name)

    q = proj("q", (d * h) ** -0.5)(x)  # [B, L, N, Dk]
    k = proj("k", d ** -0.5)(x)  # [B, L, N, Dk]
    v = proj("v", d ** -0.5)(x)  # [B, L, N, Dk]
    table = self.param("relative_attention_bias", nn.with_logical_partitioning(
        nn.initializers.normal(d ** -0.5), (None, "heads")), (cfg.relative_attention_num_buckets, n), pdtype)
    position_bias = jnp.take(table, buckets, axis=0).astype(jnp.float32).transpose(2, 0, 1)  # [N, L, L]
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32)  # [B, N, L, L]
    scores = scores + position_bias[None] + mask_bias[:, None, None, :]
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, v, preferred_element_type=jnp.float32).astype(dtype)  # [B, L, N, Dk]
    b, l = out.shape[:2]
    return Einsum("blf,fd->bld", (n, h, d), ("heads", "head_dim", "embed"), dtype=dtype, param_dtype=pdtype,
                  kernel_init=nn.initializers.normal((n * h) ** -0.5), einsum_shape=(n * h, d),
                  name="o")(out.reshape(b, l, n * h))  # [B, L, D]


class GatedGeluFFN(nn.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x), no biases; the gate product in fp32."""

  config: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, f = cfg.d_model, cfg.d_ff

    def dense(name, shape, axes, std):
      return Einsum("bli,io->blo", shape, axes, dtype=dtype, param_dtype=pdtype,
                    kernel_init=nn.initializers.normal(std), name=name)

    gate = dense("wi_0", (d, f), ("embed", "mlp"), d ** -0.5)(x)  # [B, L, F]
    linear = dense("wi_1", (d, f), ("embed", "mlp"), d ** -0.5)(x)  # [B, L, F]
    hidden = (jax.nn.gelu(gate.astype(jnp.float32), approximate=True) * linear.astype(jnp.float32)).astype(dtype)
    return dense("wo", (f, d), ("mlp", "embed"), f ** -0.5)(hidden)  # [B, L, D]


class EncoderLayer(nn.Module):
  """x + attn(norm(x)), then + ffn(norm(x)); the unit `nn.scan` stacks."""

  config: T5Config

  @nn.compact
  def __call__(self, x, buckets, mask_bias):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h = T5LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="attn_norm")(x)
    x = clamp_fp16(x + SelfAttention(cfg, name="attn")(h, buckets, mask_bias))
    h = T5LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="ffn_norm")(x)
    x = clamp_fp16(x + GatedGeluFFN(cfg, name="ffn")(h))
    return x, None


class T5Encoder(nn.Module):
  """umT5 encoder. `apply({"params": p}, token_ids [B, L][, mask [B, L]])` -> last hidden state [B, L, D].

  `mask` is 1 (or True) for tokens and 0 for padding; padded keys get a large negative
  bias. Rows of padded queries are computed but meaningless (`encode` zeroes them).
  Compute dtype `config.dtype`; fp16 gets transformers' overflow clamp (`clamp_fp16`),
  but unlike transformers' fp16 loading, `wo` is not kept in fp32: run umT5 in bf16
  (as Wan does) or fp32.
  """

  config: T5Config

  @nn.compact
  def __call__(self, token_ids, mask=None):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    b, l = token_ids.shape
    x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype, name="embed",
                 embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))(
                     token_ids)  # [B, L, D]
    buckets = jnp.asarray(relative_position_buckets(l, cfg.relative_attention_num_buckets,
                                                     cfg.relative_attention_max_distance))  # [L, L]
    if mask is None:
      mask_bias = jnp.zeros((b, l), jnp.float32)
    else:
      mask_bias = jnp.where(mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)  # [B, L]
    if cfg.scan_layers:
      layers = nn.scan(EncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="layers")
      x, _ = layers(x, buckets, mask_bias)
    else:
      for i in range(cfg.num_layers):
        x, _ = EncoderLayer(cfg, name=f"layers_{i}")(x, buckets, mask_bias)
    return T5LayerNorm(cfg.layer_norm_eps, dtype, pdtype, name="final_norm")(x)


def _concrete(x) -> np.ndarray | None:
  return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def check_encoder_inputs(config: T5Config, token_ids, mask) -> None:
  """Shapes always; id range, 0/1 mask values and right padding too when the arrays are concrete."""
  ids_shape, mask_shape = tuple(np.shape(token_ids)), tuple(np.shape(mask))
  if len(ids_shape) != 2 or ids_shape[1] < 1:
    raise ValueError(f"token_ids must be [B, L] with L >= 1, got shape {ids_shape}")
  if mask_shape != ids_shape:
    raise ValueError(f"mask has shape {mask_shape}, expected the token_ids shape {ids_shape}")
  if ids_shape[1] > config.text_len:
    raise ValueError(f"token_ids have {ids_shape[1]} tokens, more than text_len={config.text_len}; truncate when "
                     "tokenizing (encode_prompts does)")
  if not jnp.issubdtype(jnp.result_type(token_ids), jnp.integer):
    raise ValueError(f"token_ids must be integers, got dtype {jnp.result_type(token_ids)}")
  ids = _concrete(token_ids)
  if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
    bad = ids[(ids < 0) | (ids >= config.vocab_size)][0]
    raise ValueError(f"token id {bad} is outside the vocabulary [0, {config.vocab_size})")
  values = _concrete(mask)
  if values is None:
    return
  if not np.isin(values, (0, 1)).all():
    raise ValueError(f"mask must hold 0/1 (or bools), got values {np.unique(values)[:5].tolist()}")
  values = values.astype(bool)
  ragged = np.any(values[:, 1:] & ~values[:, :-1], axis=1)
  if ragged.any():
    raise ValueError(f"mask row {int(np.argmax(ragged))} has tokens after padding; encode expects right-padded "
                     "sequences (ones, then zeros), as the tokenizer pads them")


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: T5Config, params: dict, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
  hidden = T5Encoder(config).apply({"params": params}, token_ids, mask)  # [B, L, D]
  l = token_ids.shape[1]
  lengths = jnp.sum(mask > 0, axis=1)  # [B]
  keep = jnp.arange(l)[None, :] < lengths[:, None]  # [B, L]
  hidden = jnp.where(keep[..., None], hidden, jnp.zeros((), hidden.dtype))
  return jnp.pad(hidden, ((0, 0), (0, config.text_len - l), (0, 0)))  # [B, text_len, D]


def encode(config: T5Config, params: dict, token_ids, mask) -> jax.Array:
  """Wan's text embeddings: [B, text_len, d_model] in the compute dtype.

  Runs the encoder on token_ids [B, L] (L <= text_len) with the padding mask [B, L]
  (1 for tokens, right-padded), keeps each sequence's first `sum(mask)` rows and
  zeroes the rest, then zero-pads to `text_len` rows, as diffusers' WanPipeline
  does. L > text_len is an error (nothing is truncated silently).
  """
  token_ids = token_ids if isinstance(token_ids, jax.Array) else np.asarray(token_ids)
  mask = mask if isinstance(mask, jax.Array) else np.asarray(mask)
  check_encoder_inputs(config, token_ids, mask)
  return _encode(config, params, jnp.asarray(token_ids), jnp.asarray(mask))
