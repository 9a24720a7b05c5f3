"""The Wan2.2 video DiT in Flax Linen, with Plan-X's optional semantic branch (Plan-X Section 3.2, 6.2).

Patchify -> blocks of [6-way adaLN self-attention with full-width q/k RMSNorm and 3D
RoPE; text cross-attention (plus, when semantic tokens are given, a rotated semantic
segment under the same softmax, Eq. 6-7); GELU-tanh FFN] -> modulated head ->
unpatchify. Layout channels-last [B, F, H, W, C]. Samplers, losses, the MMDiT variant
and conversion live elsewhere.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from planx_jax.kernels.attention import attention, split_cross_attention
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.dit_semantic import check_semantic_inputs
from planx_jax.models.layers import Einsum, RMSNorm, dtype_of, maybe_remat
from planx_jax.models.rope import identity_rope, rope3d_tables, video_rope_tables
from planx_jax.parallel.rules import constrain


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding [..., dim] fp32 of timesteps [...]: [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)  # [dim/2]
  args = t.astype(jnp.float32)[..., None] * freqs  # [..., dim/2]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Non-affine LayerNorm over the last axis, in fp32 (returns fp32)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


# Random init as original Wan's `init_weights`: Xavier-uniform kernels (fan-in / fan-out of the torch Linear, or of
# the Conv3d flattened), zero biases, N(0, 0.02) in the text / time embedding MLPs (and the semantic one), a zero
# output head. Pretrained weights replace it; a DiT trained from scratch (the demo) depends on it: Xavier keeps a
# layer's output scale at any width, N(0, 0.02) only near Wan's (x0.16 per layer at width 64, x1.1 at 3072).
EMBEDDING_INIT = nn.initializers.normal(0.02)
ZERO_INIT = nn.initializers.zeros


def xavier(in_axis, out_axis):
  """Xavier-uniform over the kernel axes that are the torch layer's fan-in and fan-out."""
  return nn.initializers.xavier_uniform(in_axis=in_axis, out_axis=out_axis)


def dense(x, features: int, axes: tuple[str | None, str | None], dtype, param_dtype, name: str,
          kernel_init=xavier(-2, -1)):
  """y = x W + b with a [in, out] kernel (fp32 accumulation, compute dtype); call inside a compact method."""
  return Einsum("...i,io->...o", (x.shape[-1], features), axes, (features,), (axes[1],), dtype=dtype,
                param_dtype=param_dtype, kernel_init=kernel_init, name=name)(x)


class MLP2(nn.Module):
  """linear_1 -> activation -> linear_2 (Wan's time / text embedders, the semantic embedder)."""

  features: int
  activation: str  # "silu" or "gelu_tanh"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = jax.nn.silu if self.activation == "silu" else (lambda y: jax.nn.gelu(y, approximate=True))
    h = dense(x, self.features, (None, "embed"), self.dtype, self.param_dtype, "linear_1", EMBEDDING_INIT)
    h = act(h.astype(jnp.float32)).astype(self.dtype)
    return dense(h, self.features, ("embed", "embed"), self.dtype, self.param_dtype, "linear_2", EMBEDDING_INIT)


def full_width_rms_norm(x, eps: float, dtype, param_dtype, name: str):
  """RMSNorm over all heads together (Wan's `rms_norm_across_heads`): [B, L, N, Dh] -> same."""
  b, l, n, d = x.shape
  return RMSNorm(eps, dtype=dtype, param_dtype=param_dtype, name=name)(x.reshape(b, l, n * d)).reshape(b, l, n, d)


class Attention(nn.Module):
  """Wan attention: q/k/v/o with bias, full-width q/k RMSNorm.

  Self-attention (context None) rotates q and k with the video tables. Cross-attention
  reads the text context; given semantic tokens it adds `k_sem`, `v_sem`,
  `norm_k_sem` and the rotated semantic segment under the same softmax.
  """

  config: DiTConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x, video_rope, context=None, semantic=None, semantic_rope=None, semantic_mask=None):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    dim, n, d = cfg.dim, cfg.num_heads, cfg.head_dim

    def proj(name):
      return Einsum("bld,dnh->blnh", (dim, n, d), ("embed", "heads", "head_dim"), (n, d), ("heads", "head_dim"),
                    dtype=dtype, param_dtype=pdtype, kernel_init=xavier(0, (1, 2)), name=name)

    def norm(y, name):
      return full_width_rms_norm(y, cfg.eps, dtype, pdtype, name)

    q = norm(proj("q")(x), "norm_q")  # [B, L, N, Dh]
    source = x if context is None else context
    k = norm(proj("k")(source), "norm_k")  # [B, S, N, Dh]
    v = proj("v")(source)  # [B, S, N, Dh]
    # RoPE goes to the attention call: the Pallas kernel rotates tiles in VMEM, the others in XLA.
    if not self.cross:
      out = attention(q, k, v, rope=video_rope, rope_style="interleaved", causal=False, impl=cfg.attention_impl)
    elif semantic is None:
      out = attention(q, k, v, causal=False, impl=cfg.attention_impl)
    else:
      k_sem = norm(proj("k_sem")(semantic), "norm_k_sem")  # [B, S_sem, N, Dh], not yet rotated
      v_sem = proj("v_sem")(semantic)  # [B, S_sem, N, Dh]
      q_rope = video_rope if cfg.semantic_rope else identity_rope(video_rope)
      out = split_cross_attention(q, k, v, k_sem, v_sem, q_rope=q_rope, k_sem_rope=semantic_rope,
                                  rope_style="interleaved", sem_mask=semantic_mask, impl=cfg.attention_impl)
    b, l = out.shape[:2]
    return Einsum("blf,fd->bld", (n, d, dim), ("heads", "head_dim", "embed"), (dim,), ("embed",), dtype=dtype,
                  param_dtype=pdtype, einsum_shape=(n * d, dim), kernel_init=xavier((0, 1), 2),
                  name="o")(out.reshape(b, l, n * d))


class DiTBlock(nn.Module):
  """One Wan block; `modulation` [B, L or 1, 6, D] fp32 is the projected time embedding."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x, modulation, video_rope, text, semantic, semantic_rope, semantic_mask):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        lambda key, shape, dt: jax.random.normal(key, shape, dt) / math.sqrt(cfg.dim), (None, "embed")),
        (6, cfg.dim), pdtype)
    mods = table.astype(jnp.float32) + modulation  # [B, L|1, 6, D] fp32
    shift, scale, gate, c_shift, c_scale, c_gate = (mods[:, :, i] for i in range(6))  # [B, L|1, D] each

    h = (layer_norm(x, cfg.eps) * (1 + scale) + shift).astype(dtype)
    x = (x.astype(jnp.float32) + Attention(cfg, name="self_attn")(h, video_rope) * gate).astype(dtype)

    h = x.astype(jnp.float32)  # Wan: no norm before cross-attention unless cross_attn_norm
    if cfg.cross_attn_norm:
      h = layer_norm(x, cfg.eps)
      norm_scale = self.param("cross_attn_norm_scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                              (cfg.dim,), pdtype)
      norm_bias = self.param("cross_attn_norm_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                             (cfg.dim,), pdtype)
      h = h * norm_scale.astype(jnp.float32) + norm_bias.astype(jnp.float32)
    x = x + Attention(cfg, cross=True, name="cross_attn")(h.astype(dtype), video_rope, text, semantic, semantic_rope,
                                                           semantic_mask)

    h = (layer_norm(x, cfg.eps) * (1 + c_scale) + c_shift).astype(dtype)
    h = dense(h, cfg.ffn_dim, ("embed", "mlp"), dtype, pdtype, "ffn_1")
    h = jax.nn.gelu(h.astype(jnp.float32), approximate=True).astype(dtype)
    h = dense(h, cfg.dim, ("mlp", "embed"), dtype, pdtype, "ffn_2")
    x = (x.astype(jnp.float32) + h.astype(jnp.float32) * c_gate).astype(dtype)
    return constrain(x, ("act_batch", "act_len", "act_embed")), None


class DiT(nn.Module):
  """Wan DiT. `apply({"params": p}, latents, timestep, text_emb[, semantic, semantic_positions])` -> velocity."""

  config: DiTConfig

  def _check_inputs(self, latents, timestep, text_emb, semantic, semantic_positions, semantic_mask):
    cfg = self.config
    if latents.ndim != 5:
      raise ValueError(f"latents must be [B, F, H, W, C] (channels last), got shape {tuple(latents.shape)}")
    b, f, h, w, c = latents.shape
    if c != cfg.in_channels:
      raise ValueError(f"latents have {c} channels, the DiT expects in_channels={cfg.in_channels}")
    for name, size, p in zip(("frames", "height", "width"), (f, h, w), cfg.patch_size):
      if size % p:
        raise ValueError(f"latent {name} {size} is not divisible by the patch size {p} (patch_size {cfg.patch_size})")
    grid = (f // cfg.patch_size[0], h // cfg.patch_size[1], w // cfg.patch_size[2])
    tokens = grid[0] * grid[1] * grid[2]
    if timestep.shape not in ((b,), (b, tokens)):
      raise ValueError(f"timestep must be [B]={b} or per token [B, L]=[{b}, {tokens}], got {tuple(timestep.shape)}")
    if text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[-1] != cfg.text_dim:
      raise ValueError(f"text_emb must be [B={b}, T, text_dim={cfg.text_dim}], got {tuple(text_emb.shape)}")
    check_semantic_inputs(cfg.semantic_in_dim, b, semantic, semantic_positions, semantic_mask)
    return grid

  @nn.compact
  def __call__(self, latents, timestep, text_emb, semantic=None, semantic_positions=None, semantic_mask=None):
    """Flow velocity for noisy latents.

    Args:
      latents: [B, F, H, W, C] noisy latents.
      timestep: [B], or [B, L] per token (TI2V: 0 on the fixed first frame), in
        the model's 0..1000 scale.
      text_emb: [B, T, text_dim] text-encoder states (Wan: umT5, zero-padded to 512).
      semantic: optional [B, S, semantic_in_dim] semantic embeddings (codebook
        vectors or planner hidden states).
      semantic_positions: [B, S, 3] float (f, h, w) positions on the latent-token
        grid (see `dit_semantic.semantic_positions`).
      semantic_mask: optional [B, S] bool, False for padding tokens.

    Returns:
      [B, F, H, W, out_channels] velocity in the compute dtype.
    """
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    grid = self._check_inputs(latents, timestep, text_emb, semantic, semantic_positions, semantic_mask)
    b = latents.shape[0]
    pt, ph, pw = cfg.patch_size
    fg, hg, wg = grid

    # Patchify: [B, F, H, W, C] -> [B, L, pt*ph*pw*C] -> [B, L, D].
    x = latents.reshape(b, fg, pt, hg, ph, wg, pw, cfg.in_channels)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, fg * hg * wg, pt, ph, pw, cfg.in_channels)
    x = Einsum("bltpqc,tpqcd->bld", (pt, ph, pw, cfg.in_channels, cfg.dim),
               (None, None, None, None, "embed"), (cfg.dim,), ("embed",), dtype=dtype, param_dtype=pdtype,
               kernel_init=xavier((0, 1, 2, 3), 4), name="patch_embedding")(x)  # [B, L, D]

    # Time: fp32 sinusoid -> MLP (fp32) -> 6-way projection (fp32), as original Wan; diffusers runs the
    # projection in the model dtype, which only differs from this in bf16.
    t = timestep if timestep.ndim == 2 else timestep[:, None]  # [B, L|1]
    temb = MLP2(cfg.dim, "silu", jnp.float32, pdtype, name="time_embedding")(timestep_embedding(t, cfg.freq_dim))
    modulation = Einsum("bld,dkc->blkc", (cfg.dim, 6, cfg.dim), ("embed", None, "mlp"), (6, cfg.dim), (None, "mlp"),
                        dtype=jnp.float32, param_dtype=pdtype, kernel_init=xavier(0, (1, 2)),
                        name="time_projection")(jax.nn.silu(temb))
    text = MLP2(cfg.dim, "gelu_tanh", dtype, pdtype, name="text_embedding")(text_emb.astype(dtype))  # [B, T, D]

    video_rope = tuple(jnp.asarray(a) for a in video_rope_tables(grid, cfg.head_dim, cfg.rope_theta))  # [L, Dh/2]
    semantic_rope = None
    if semantic is not None:
      semantic = MLP2(cfg.dim, "gelu_tanh", dtype, pdtype, name="semantic_embedding")(semantic.astype(dtype))
      semantic_rope = rope3d_tables(semantic_positions, cfg.head_dim, cfg.rope_theta)  # [B, S, Dh/2]
      if not cfg.semantic_rope:
        semantic_rope = identity_rope(semantic_rope)
    elif cfg.semantic_in_dim is not None and self.is_initializing():
      raise ValueError("initialise a DiT with a semantic branch by passing semantic tokens to init")

    args = (modulation, video_rope, text, semantic, semantic_rope, semantic_mask)
    block_cls = maybe_remat(DiTBlock, cfg.remat)
    if cfg.scan_layers:
      blocks = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast,) * len(args), length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="blocks")
      x, _ = blocks(x, *args)
    else:
      for i in range(cfg.num_layers):
        x, _ = block_cls(cfg, name=f"blocks_{i}")(x, *args)

    # Head: 2-way modulation from temb (not the 6-way projection), then project and unpatchify.
    table = self.param("head_scale_shift_table", nn.with_logical_partitioning(
        lambda key, shape, dt: jax.random.normal(key, shape, dt) / math.sqrt(cfg.dim), (None, "embed")),
        (2, cfg.dim), pdtype)
    shift = table[0].astype(jnp.float32) + temb  # [B, L|1, D]
    scale = table[1].astype(jnp.float32) + temb
    h = (layer_norm(x, cfg.eps) * (1 + scale) + shift).astype(dtype)
    out = Einsum("bld,dtpqc->bltpqc", (cfg.dim, pt, ph, pw, cfg.out_channels), ("embed", None, None, None, None),
                 (pt, ph, pw, cfg.out_channels), (None, None, None, None), dtype=dtype, param_dtype=pdtype,
                 kernel_init=ZERO_INIT, name="head")(h)  # [B, L, pt, ph, pw, C]
    out = out.reshape(b, fg, hg, wg, pt, ph, pw, cfg.out_channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return out.reshape(b, fg * pt, hg * ph, wg * pw, cfg.out_channels)
