"""The semantic planner: a Qwen2 decoder in Flax Linen (Plan-X Section 3.1).

Pre-norm layers (RMSNorm -> GQA attention with q/k/v bias and half-split RoPE ->
RMSNorm -> SwiGLU), stacked with `nn.scan` (params under `layers` with a leading
layer axis) or unrolled (`layers_0`, `layers_1`, ...) by `config.scan_layers`. A
KV cache (`KVCache`) makes the same forward serve prefill and decoding.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from planx_jax.kernels.attention import attention
from planx_jax.models.layers import Einsum, RMSNorm, dtype_of, maybe_remat
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.models.rope import apply_rope_half, rope_tables
from planx_jax.parallel.rules import constrain


class KVCache(NamedTuple):
  """Keys/values of every layer for `max_len` slots.

  k, v: [num_layers, B, num_kv_heads, max_len, head_dim] (head-major; RoPE already
    applied to k); with unrolled layers (`scan_layers=False`) a tuple of num_layers
    arrays [B, num_kv_heads, max_len, head_dim], so each layer updates its own buffer.
  segment_ids: [B, max_len] int32; 0 marks a padding / unwritten slot.
  index: int32 scalar, the next slot to write (shared by the batch: prompts are
    left-padded so they end at the same slot).
  """

  k: jax.Array
  v: jax.Array
  segment_ids: jax.Array
  index: jax.Array


def init_cache(config: PlannerConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  dtype = dtype_of(config.dtype) if dtype is None else dtype
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)
  if config.scan_layers:
    k = jnp.zeros((config.num_layers, *shape), dtype)
    v = jnp.zeros((config.num_layers, *shape), dtype)
  else:
    k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(
      k=k,
      v=v,
      segment_ids=jnp.zeros((batch, max_len), jnp.int32),
      index=jnp.zeros((), jnp.int32),
  )


class PlannerOutput(NamedTuple):
  hidden: jax.Array  # [B, L, H] after the final norm, compute dtype
  logits: jax.Array | None  # [B, L, V] fp32, None when not requested
  cache: KVCache | None  # updated cache when one was given


class Attention(nn.Module):
  config: PlannerConfig

  @nn.compact
  def __call__(self, x, cos, sin, segment_ids, layer_cache, cache_segment_ids, cache_index):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h, n, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def proj(name, heads, axis):
      return Einsum("bth,hnd->btnd", (h, heads, d), ("embed", axis, "head_dim"), (heads, d), (axis, "head_dim"),
                    dtype=dtype, param_dtype=pdtype, name=name)

    q = proj("q", n, "heads")(x)  # [B, T, N, D], not yet rotated
    k = proj("k", kv, "kv_heads")(x)  # [B, T, K, D]
    v = proj("v", kv, "kv_heads")(x)  # [B, T, K, D]
    if layer_cache is None:
      # RoPE goes to the attention call: the Pallas kernel rotates q / k tiles in VMEM, the others in XLA.
      out = attention(q, k, v, rope=(cos, sin), rope_style="half", causal=True, q_segment_ids=segment_ids,
                      kv_segment_ids=segment_ids, impl=cfg.attention_impl)
      new_cache = None
    else:
      q, k = apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin)  # the cache stores rotated keys
      # The cache is head-major [B, K, S, D]: each kv head's keys are contiguous for the attention dots.
      k_all = jax.lax.dynamic_update_slice(layer_cache[0], k.swapaxes(1, 2).astype(layer_cache[0].dtype),
                                           (0, 0, cache_index, 0))
      v_all = jax.lax.dynamic_update_slice(layer_cache[1], v.swapaxes(1, 2).astype(layer_cache[1].dtype),
                                           (0, 0, cache_index, 0))
      out = attention(q, k_all.swapaxes(1, 2).astype(dtype), v_all.swapaxes(1, 2).astype(dtype), causal=True,
                      q_offset=cache_index, q_segment_ids=segment_ids, kv_segment_ids=cache_segment_ids,
                      impl=cfg.attention_impl)
      new_cache = (k_all, v_all)
    b, t = out.shape[:2]
    # One [N*D, H] matmul (a plain 2-D contraction: no layout copies of the kernel on any backend).
    o = Einsum("btf,fh->bth", (n, d, h), ("heads", "head_dim", "embed"), dtype=dtype, param_dtype=pdtype,
               einsum_shape=(n * d, h), name="o")(out.reshape(b, t, n * d))  # [B, T, H]
    return o, new_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  config: PlannerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h, f = cfg.hidden_size, cfg.intermediate_size
    gate = Einsum("bth,hf->btf", (h, f), ("embed", "mlp"), dtype=dtype, param_dtype=pdtype, name="gate")(x)
    up = Einsum("bth,hf->btf", (h, f), ("embed", "mlp"), dtype=dtype, param_dtype=pdtype, name="up")(x)
    hidden = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(dtype)  # [B, T, F]
    return Einsum("btf,fh->bth", (f, h), ("mlp", "embed"), dtype=dtype, param_dtype=pdtype, name="down")(hidden)


class DecoderLayer(nn.Module):
  """x + attn(norm(x)), then + mlp(norm(x)); the unit `nn.scan` stacks."""

  config: PlannerConfig

  @nn.compact
  def __call__(self, x, layer_cache, cos, sin, segment_ids, cache_segment_ids, cache_index):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    norm = RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name="input_norm")(x)
    attn, new_cache = Attention(cfg, name="attn")(norm, cos, sin, segment_ids, layer_cache, cache_segment_ids,
                                                  cache_index)
    x = x + attn
    norm = RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name="post_attn_norm")(x)
    x = x + MLP(cfg, name="mlp")(norm)
    return constrain(x, ("act_batch", "act_len", "act_embed")), new_cache


class Planner(nn.Module):
  """Qwen2 causal LM. `apply({"params": p}, token_ids)` -> fp32 logits [B, L, V]."""

  config: PlannerConfig

  def setup(self):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
    )
    # cache_index (argument 7 counting self) is a Python int without a cache: static under remat.
    layer_cls = maybe_remat(DecoderLayer, cfg.remat, static_argnums=(7,))
    if not cfg.scan_layers:
      self.layer_list = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    else:
      self.layers = nn.scan(
          layer_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name="layers")
    self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = Einsum("bth,hv->btv", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                            dtype=dtype, param_dtype=pdtype, out_dtype=jnp.float32)

  def __call__(self, token_ids, positions=None, segment_ids=None, zero_embed_mask=None):
    """Full-sequence causal forward. token_ids [B, L] -> logits [B, L, V] fp32."""
    return self.forward(token_ids, positions, segment_ids, zero_embed_mask=zero_embed_mask).logits

  def forward(self, token_ids, positions=None, segment_ids=None, cache: KVCache | None = None,
              zero_embed_mask=None, compute_logits: bool = True) -> PlannerOutput:
    """Causal forward over a chunk of tokens, optionally reading and writing a KV cache.

    Args:
      token_ids: [B, T] int.
      positions: [B, T] RoPE positions (int or float); default 0..T-1 after the
        cache index.
      segment_ids: [B, T] int; tokens attend within equal ids, 0 is padding.
        Default: one segment.
      cache: `KVCache`; the chunk is written at `cache.index` and attends to all
        earlier slots of its segment.
      zero_embed_mask: [B, T] bool; True zeroes that token's input embedding
        (Plan-X's first-frame dropout, T2V).
      compute_logits: also project to the vocabulary.
    """
    cfg = self.config
    b, t = token_ids.shape
    start = 0 if cache is None else cache.index
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + start, (b, t))
    x = self.embed(token_ids)  # [B, T, H]
    if zero_embed_mask is not None:
      x = jnp.where(zero_embed_mask[..., None], jnp.zeros((), x.dtype), x)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)  # [B, T, D/2]
    if cache is None:
      layer_caches, cache_segments = None, None
    else:
      if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
      cache_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32), (0, start))
      layer_caches = (cache.k, cache.v)
    if cfg.scan_layers:
      x, new_layer_caches = self.layers(x, layer_caches, cos, sin, segment_ids, cache_segments, start)
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layer_list):
        layer_cache = None if cache is None else (cache.k[i], cache.v[i])
        x, new = layer(x, layer_cache, cos, sin, segment_ids, cache_segments, start)
        if new is not None:
          new_k.append(new[0])
          new_v.append(new[1])
      new_layer_caches = (tuple(new_k), tuple(new_v))
    hidden = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(new_layer_caches[0], new_layer_caches[1], cache_segments, cache.index + t)
    logits = self.logits(hidden) if compute_logits else None
    return PlannerOutput(hidden, logits, new_cache)

  def logits(self, hidden):
    """[B, T, H] final hidden states -> [B, T, V] fp32 logits."""
    if self.config.tie_word_embeddings:
      table = self.embed.embedding.astype(dtype_of(self.config.dtype))
      return jnp.einsum("bth,vh->btv", hidden, table, preferred_element_type=jnp.float32)
    return self.lm_head(hidden)

  def hidden_states(self, token_ids, positions=None, segment_ids=None, zero_embed_mask=None):
    """Final-norm hidden states [B, L, H] (the end-to-end semantic embeddings)."""
    return self.forward(token_ids, positions, segment_ids, zero_embed_mask=zero_embed_mask,
                        compute_logits=False).hidden
