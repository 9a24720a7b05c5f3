"""A small two-stream MMDiT video backbone (SD3 / Seedance style) with Plan-X's semantic keys appended (Eq. 5).

It is the MMDiT variant of Plan-X Section 6.2, for tests and research; not a converter for any pretrained MMDiT.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.config_utils import ConfigMixin
from planx_jax.kernels.attention import attention
from planx_jax.models.dit import layer_norm, timestep_embedding
from planx_jax.models.dit_semantic import check_semantic_inputs
from planx_jax.models.layers import Einsum, RMSNorm, dtype_of
from planx_jax.models.rope import apply_rope_interleaved, rope3d_axis_dims, rope3d_tables, video_rope_tables

Rope = tuple[jax.Array, jax.Array]  # cos, sin [B or 1, L, head_dim / 2] fp32


@dataclasses.dataclass(frozen=True)
class MMDiTConfig(ConfigMixin):
  """Hyper-parameters of the MMDiT. The width is num_heads * head_dim.

  `semantic_in_dim` is the width of the semantic embeddings (TA-Tok codebook vectors or planner hidden
  states); None means the model has no semantic branch (`add_semantic_branch` adds one).
  `attention_impl` names an implementation of `planx_jax.kernels.attention`.
  """

  in_channels: int
  out_channels: int
  text_dim: int
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  patch_size: tuple[int, int, int] = (1, 2, 2)
  freq_dim: int = 256
  eps: float = 1e-6
  rope_theta: float = 10000.0
  semantic_in_dim: int | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"

  PRESETS: ClassVar[tuple[str, ...]] = ("tiny",)

  def __post_init__(self):
    from planx_jax.kernels.attention.dispatch import validate_impl

    object.__setattr__(self, "patch_size", tuple(self.patch_size))
    for name in ("in_channels", "out_channels", "text_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                 "freq_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"MMDiTConfig.{name} must be a positive int, got {value!r}")
    if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
      raise ValueError(f"MMDiTConfig.patch_size must be three positive ints (t, h, w), got {self.patch_size!r}")
    if self.semantic_in_dim is not None and (not isinstance(self.semantic_in_dim, int) or self.semantic_in_dim < 1):
      raise ValueError(f"MMDiTConfig.semantic_in_dim must be a positive int or None, got {self.semantic_in_dim!r}")
    if self.freq_dim % 2:
      raise ValueError(f"MMDiTConfig.freq_dim must be even ([cos, sin] halves), got {self.freq_dim}")
    if self.eps <= 0:
      raise ValueError(f"MMDiTConfig.eps must be positive, got {self.eps}")
    rope3d_axis_dims(self.head_dim)
    dtype_of(self.dtype)
    dtype_of(self.param_dtype)
    validate_impl(self.attention_impl)

  @classmethod
  def tiny(cls, **overrides) -> "MMDiTConfig":
    """Two blocks of width 32 for tests and the CPU demo."""
    return cls.from_dict(overrides, base=cls(
        in_channels=4, out_channels=4, text_dim=24, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
        freq_dim=32))

  @property
  def hidden_size(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def patch_volume(self) -> int:
    return int(np.prod(self.patch_size))


# --- pure functions ----------------------------------------------------------------------------------


def patchify(latents: jax.Array, patch: tuple[int, int, int]) -> jax.Array:
  """[B, F, H, W, C] -> [B, L, pt*ph*pw*C], tokens ordered (f, h, w) like `rope.grid_positions`."""
  b, f, h, w, c = latents.shape
  pt, ph, pw = patch
  x = latents.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)  # [B, F', pt, H', ph, W', pw, C]
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, F', H', W', pt, ph, pw, C]
  return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> jax.Array:
  """[B, F'*H'*W', pt*ph*pw*C] -> [B, F'*pt, H'*ph, W'*pw, C]; the inverse of `patchify`."""
  b = tokens.shape[0]
  channels = tokens.shape[-1] // int(np.prod(patch))
  x = tokens.reshape(b, *grid, *patch, channels)  # [B, F', H', W', pt, ph, pw, C]
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, F', pt, H', ph, W', pw, C]
  return x.reshape(b, grid[0] * patch[0], grid[1] * patch[1], grid[2] * patch[2], channels)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1.0 + scale) + shift


def check_inputs(config: MMDiTConfig, latents, timestep, text, semantic=None, semantic_positions=None,
                 semantic_mask=None) -> None:
  """Raises ValueError naming the first input whose shape does not fit `config` (shapes only, no tracing)."""
  if latents.ndim != 5:
    raise ValueError(f"latents must be channels-last [B, F, H, W, C], got shape {tuple(latents.shape)}")
  b, *sizes, channels = latents.shape
  if channels != config.in_channels:
    raise ValueError(f"latents have {channels} channels (shape {tuple(latents.shape)}); "
                     f"config.in_channels is {config.in_channels}")
  for axis, size, patch in zip("FHW", sizes, config.patch_size):
    if size < 1 or size % patch:
      raise ValueError(f"latent size {axis} = {size} is not a positive multiple of its patch size {patch} "
                       f"(patch_size {config.patch_size})")
  if tuple(timestep.shape) != (b,):
    raise ValueError(f"timestep must have shape [B] = ({b},), got {tuple(timestep.shape)}")
  if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != config.text_dim:
    raise ValueError(f"text must have shape [B={b}, T, text_dim={config.text_dim}], got {tuple(text.shape)}")
  check_semantic_inputs(config.semantic_in_dim, b, semantic, semantic_positions, semantic_mask)


# --- modules -----------------------------------------------------------------------------------------


def _linear(config: MMDiTConfig, spec: str, shape, axes, name: str, zero_init: bool = False, fp32: bool = False):
  """Einsum with a bias over the last kernel axis; `fp32` keeps the compute in fp32 (adaLN, timestep MLP)."""
  dtype = jnp.float32 if fp32 else dtype_of(config.dtype)
  init = nn.initializers.zeros if zero_init else nn.initializers.normal(0.02)
  return Einsum(spec, shape, axes, (shape[-1],), (axes[-1],), dtype=dtype, param_dtype=dtype_of(config.param_dtype),
                kernel_init=init, name=name)


def _heads_projection(config: MMDiTConfig, name: str) -> Einsum:
  """x [B, L, D] -> [B, L, N, Dh], with bias."""
  d, n, hd = config.hidden_size, config.num_heads, config.head_dim
  return Einsum("bld,dnh->blnh", (d, n, hd), ("embed", "heads", "head_dim"), (n, hd), ("heads", "head_dim"),
                dtype=dtype_of(config.dtype), param_dtype=dtype_of(config.param_dtype), name=name)


def _head_norm(config: MMDiTConfig, name: str) -> RMSNorm:
  """RMSNorm over head_dim, per head (scale [Dh])."""
  return RMSNorm(config.eps, dtype=dtype_of(config.dtype), param_dtype=dtype_of(config.param_dtype), name=name)


class StreamAttention(nn.Module):
  """One stream's own attention weights: q / k / v projections, per-head q / k RMSNorm, output projection."""

  config: MMDiTConfig

  def setup(self):
    cfg = self.config
    d, n, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    self.q = _heads_projection(cfg, "q")
    self.k = _heads_projection(cfg, "k")
    self.v = _heads_projection(cfg, "v")
    self.norm_q = _head_norm(cfg, "norm_q")
    self.norm_k = _head_norm(cfg, "norm_k")
    self.o = Einsum("blf,fd->bld", (n, hd, d), ("heads", "head_dim", "embed"), (d,), ("embed",),
                    dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), einsum_shape=(n * hd, d))

  def queries(self, x: jax.Array) -> jax.Array:
    return self.norm_q(self.q(x))  # [B, L, N, Dh]

  def keys(self, x: jax.Array) -> jax.Array:
    return self.norm_k(self.k(x))  # [B, L, N, Dh]

  def values(self, x: jax.Array) -> jax.Array:
    return self.v(x)  # [B, L, N, Dh]

  def out(self, x: jax.Array) -> jax.Array:
    b, l, n, hd = x.shape
    return self.o(x.reshape(b, l, n * hd))  # [B, L, D]


class JointAttention(nn.Module):
  """Full attention over [text; video] queries and [text; semantic; video] keys/values (Plan-X Eq. 5).

  Video queries / keys get 3D RoPE at their grid positions, semantic keys at their given positions; text is
  unrotated. Semantic tokens only add keys and values (`k_sem`, `v_sem`, `norm_k_sem`, copies of the text
  stream's at branch creation). `context_pre_only` (last block): text gives keys / values only.
  """

  config: MMDiTConfig
  context_pre_only: bool = False

  def setup(self):
    cfg = self.config
    self.text = StreamAttention(cfg)
    self.video = StreamAttention(cfg)
    self.k_sem = _heads_projection(cfg, "k_sem")
    self.v_sem = _heads_projection(cfg, "v_sem")
    self.norm_k_sem = _head_norm(cfg, "norm_k_sem")

  def qkv(self, text, video, video_rope: Rope, semantic=None, semantic_rope: Rope | None = None,
          semantic_mask=None):
    """Joint queries, keys and values.

    Args:
      text: [B, T, D], video: [B, L, D] (normalised and modulated); semantic: [B, S, D] context or None.
      video_rope, semantic_rope: cos, sin tables [B or 1, L or S, Dh/2].
      semantic_mask: [B, S] bool, False drops a semantic key.

    Returns:
      q [B, T + L, N, Dh] ([B, L, N, Dh] when context_pre_only), k and v [B, T + S + L, N, Dh],
      kv_keep [B, T + S + L] bool or None.
    """
    q_video = apply_rope_interleaved(self.video.queries(video), *video_rope)  # [B, L, N, Dh]
    k_video = apply_rope_interleaved(self.video.keys(video), *video_rope)  # [B, L, N, Dh]
    keys, values = [self.text.keys(text)], [self.text.values(text)]  # [B, T, N, Dh]
    q = q_video if self.context_pre_only else jnp.concatenate([self.text.queries(text), q_video], axis=1)
    kv_keep = None
    if semantic is not None:
      keys.append(apply_rope_interleaved(self.norm_k_sem(self.k_sem(semantic)), *semantic_rope))  # [B, S, N, Dh]
      values.append(self.v_sem(semantic))  # [B, S, N, Dh]
      if semantic_mask is not None:
        b, t, l = video.shape[0], text.shape[1], video.shape[1]
        kv_keep = jnp.concatenate([jnp.ones((b, t), bool), semantic_mask.astype(bool), jnp.ones((b, l), bool)],
                                  axis=1)  # [B, T + S + L]
    keys.append(k_video)
    values.append(self.video.values(video))
    return q, jnp.concatenate(keys, axis=1), jnp.concatenate(values, axis=1), kv_keep

  def __call__(self, text, video, video_rope: Rope, semantic=None, semantic_rope: Rope | None = None,
               semantic_mask=None):
    """Returns (text update [B, T, D] or None when context_pre_only, video update [B, L, D])."""
    q, k, v, kv_keep = self.qkv(text, video, video_rope, semantic, semantic_rope, semantic_mask)
    if kv_keep is None:
      out = attention(q, k, v, impl=self.config.attention_impl)  # [B, Tq, N, Dh]
    else:
      q_segments = jnp.ones(q.shape[:2], jnp.int32)  # every query in segment 1; dropped keys in segment 0
      out = attention(q, k, v, q_segment_ids=q_segments, kv_segment_ids=kv_keep.astype(jnp.int32),
                      impl=self.config.attention_impl)
    t, l = text.shape[1], video.shape[1]
    text_out = None if self.context_pre_only else self.text.out(out[:, :t])
    return text_out, self.video.out(out[:, out.shape[1] - l:])


class FeedForward(nn.Module):
  """Linear -> GELU(tanh) -> Linear, with biases."""

  config: MMDiTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    d, f = cfg.hidden_size, cfg.mlp_dim
    hidden = _linear(cfg, "bld,df->blf", (d, f), ("embed", "mlp"), "fc1")(x)  # [B, L, F]
    hidden = jax.nn.gelu(hidden.astype(jnp.float32), approximate=True).astype(dtype_of(cfg.dtype))
    return _linear(cfg, "blf,fd->bld", (f, d), ("mlp", "embed"), "fc2")(hidden)  # [B, L, D]


class MMDiTBlock(nn.Module):
  """Two streams with own adaLN-zero modulation, attention weights and MLP, joined in one attention."""

  config: MMDiTConfig
  context_pre_only: bool = False

  @nn.compact
  def __call__(self, text, video, c, video_rope: Rope, semantic=None, semantic_rope: Rope | None = None,
               semantic_mask=None):
    """text [B, T, D], video [B, L, D] fp32 residual streams; c [B, D] fp32. Returns (text or None, video)."""
    cfg = self.config
    d, dtype = cfg.hidden_size, dtype_of(cfg.dtype)
    silu_c = jax.nn.silu(c)  # [B, D]

    def modulation(chunks: int, name: str) -> list[jax.Array]:
      mod = _linear(cfg, "bd,de->be", (d, chunks * d), ("embed", "mlp"), name, zero_init=True, fp32=True)(silu_c)
      return [m[:, None, :] for m in jnp.split(mod, chunks, axis=-1)]  # chunks x [B, 1, D]

    v_shift, v_scale, v_gate, v_mlp_shift, v_mlp_scale, v_mlp_gate = modulation(6, "video_modulation")
    text_mod = modulation(2 if self.context_pre_only else 6, "text_modulation")
    video_in = _modulate(layer_norm(video, cfg.eps), v_shift, v_scale).astype(dtype)
    text_in = _modulate(layer_norm(text, cfg.eps), text_mod[0], text_mod[1]).astype(dtype)
    text_attn, video_attn = JointAttention(cfg, self.context_pre_only, name="attn")(
        text_in, video_in, video_rope, semantic, semantic_rope, semantic_mask)
    video = video + v_gate * video_attn.astype(jnp.float32)
    video_mlp_in = _modulate(layer_norm(video, cfg.eps), v_mlp_shift, v_mlp_scale).astype(dtype)
    video = video + v_mlp_gate * FeedForward(cfg, name="video_mlp")(video_mlp_in).astype(jnp.float32)
    if self.context_pre_only:
      return None, video
    _, _, t_gate, t_mlp_shift, t_mlp_scale, t_mlp_gate = text_mod
    text = text + t_gate * text_attn.astype(jnp.float32)
    text_mlp_in = _modulate(layer_norm(text, cfg.eps), t_mlp_shift, t_mlp_scale).astype(dtype)
    text = text + t_mlp_gate * FeedForward(cfg, name="text_mlp")(text_mlp_in).astype(jnp.float32)
    return text, video


class SemanticMLP(nn.Module):
  """Plan-X's two-layer GELU(tanh) MLP: semantic embeddings [B, S, semantic_in_dim] -> context [B, S, D]."""

  config: MMDiTConfig

  @nn.compact
  def __call__(self, semantic):
    cfg = self.config
    d = cfg.hidden_size
    linear_1 = _linear(cfg, "bsi,id->bsd", (semantic.shape[-1], d), (None, "mlp"), "linear_1")
    hidden = linear_1(semantic)  # [B, S, D]
    hidden = jax.nn.gelu(hidden.astype(jnp.float32), approximate=True).astype(dtype_of(cfg.dtype))
    return _linear(cfg, "bsd,de->bse", (d, d), ("mlp", "embed"), "linear_2")(hidden)  # [B, S, D]


class MMDiT(nn.Module):
  """`apply({"params": p}, latents, timestep, text, semantic=None, ...)` -> fp32 velocity [B, F, H, W, C_out]."""

  config: MMDiTConfig

  @nn.compact
  def __call__(self, latents, timestep, text, semantic=None, semantic_positions=None, semantic_mask=None):
    """Args:
      latents: [B, F, H, W, in_channels] channels-last video latents.
      timestep: [B] flow timesteps (1000 s).
      text: [B, T, text_dim] text encoder states.
      semantic: [B, S, semantic_in_dim] semantic embeddings, or None for the base model.
      semantic_positions: [B, S, 3] float (t, h, w) RoPE positions in the latent-token grid.
      semantic_mask: [B, S] bool, False = padding (zero attention weight); None keeps all.
    """
    cfg = self.config
    check_inputs(cfg, latents, timestep, text, semantic, semantic_positions, semantic_mask)
    d, patch = cfg.hidden_size, cfg.patch_size
    grid = tuple(size // p for size, p in zip(latents.shape[1:4], patch))
    patch_in = cfg.patch_volume * cfg.in_channels
    video = _linear(cfg, "blp,pd->bld", (patch_in, d), (None, "embed"), "patch_embed")(
        patchify(latents, patch)).astype(jnp.float32)  # [B, L, D]
    text = _linear(cfg, "btc,cd->btd", (cfg.text_dim, d), (None, "embed"), "text_embed")(text).astype(jnp.float32)
    c = _linear(cfg, "bf,fd->bd", (cfg.freq_dim, d), (None, "mlp"), "time_fc1", fp32=True)(
        timestep_embedding(timestep, cfg.freq_dim))  # [B, D]
    c = _linear(cfg, "bd,de->be", (d, d), ("mlp", "embed"), "time_fc2", fp32=True)(jax.nn.silu(c))  # [B, D]
    cos, sin = video_rope_tables(grid, cfg.head_dim, cfg.rope_theta)  # [L, Dh/2] each
    video_rope = (jnp.asarray(cos)[None], jnp.asarray(sin)[None])
    semantic_rope = None
    if semantic is not None:
      semantic = SemanticMLP(cfg, name="semantic_embedding")(semantic)  # [B, S, D]
      semantic_rope = rope3d_tables(semantic_positions, cfg.head_dim, cfg.rope_theta)  # [B, S, Dh/2] each
    for i in range(cfg.num_layers):
      text, video = MMDiTBlock(cfg, context_pre_only=i == cfg.num_layers - 1, name=f"blocks_{i}")(
          text, video, c, video_rope, semantic, semantic_rope, semantic_mask)
    shift, scale = jnp.split(_linear(cfg, "bd,de->be", (d, 2 * d), ("embed", "mlp"), "final_modulation",
                                     zero_init=True, fp32=True)(jax.nn.silu(c))[:, None, :], 2, axis=-1)
    video = _modulate(layer_norm(video, cfg.eps), shift, scale).astype(dtype_of(cfg.dtype))  # [B, L, D]
    patches = _linear(cfg, "bld,dp->blp", (d, cfg.patch_volume * cfg.out_channels), ("embed", None), "proj_out",
                      zero_init=True)(video)  # [B, L, pt*ph*pw*C_out]
    return unpatchify(patches.astype(jnp.float32), grid, patch)


# --- params --------------------------------------------------------------------------------------------


def init_params(config: MMDiTConfig, rng: jax.Array) -> dict:
  """Fresh params (plain arrays) for `config`, the semantic branch included when semantic_in_dim is set."""
  latents = jnp.zeros((1, *config.patch_size, config.in_channels), jnp.float32)
  text = jnp.zeros((1, 1, config.text_dim), jnp.float32)
  semantic = positions = None
  if config.semantic_in_dim is not None:
    semantic = jnp.zeros((1, 1, config.semantic_in_dim), jnp.float32)
    positions = jnp.zeros((1, 1, 3), jnp.float32)
  init = jax.jit(MMDiT(config).init)  # one compile instead of one per initializer
  return nn.unbox(init(rng, latents, jnp.zeros((1,), jnp.float32), text, semantic, positions))["params"]


def add_semantic_branch(config: MMDiTConfig, params: dict, semantic_in_dim: int,
                        rng: jax.Array) -> tuple[MMDiTConfig, dict]:
  """Plan-X Section 6.2 on a base MMDiT: new `k_sem`, `v_sem`, `norm_k_sem` in every block's `attn`,
  copies of that block's text-stream `k`, `v`, `norm_k` (fresh buffers), and a random `semantic_embedding`.

  Returns (config with semantic_in_dim set, new params); the given params are not modified.
  """
  if config.semantic_in_dim is not None or "semantic_embedding" in params:
    raise ValueError(f"the model already has a semantic branch (semantic_in_dim={config.semantic_in_dim})")
  branch_config = config.replace(semantic_in_dim=semantic_in_dim)
  new_params = dict(params)
  for i in range(config.num_layers):
    attn = params.get(f"blocks_{i}", {}).get("attn", {})
    text = attn.get("text", {})
    missing = [name for name in ("k", "v", "norm_k") if name not in text]
    if missing:
      raise ValueError(f"params have no blocks_{i}/attn/text/{missing[0]}; expected base MMDiT params with "
                       f"{config.num_layers} blocks")
    if "k_sem" in attn:
      raise ValueError(f"params already hold blocks_{i}/attn/k_sem")
    copies = {f"{name}_sem": jax.tree.map(lambda x: jnp.array(x, copy=True), text[name])
              for name in ("k", "v", "norm_k")}
    new_params[f"blocks_{i}"] = {**params[f"blocks_{i}"], "attn": {**attn, **copies}}
  dummy = jnp.zeros((1, 1, semantic_in_dim), jnp.float32)
  new_params["semantic_embedding"] = nn.unbox(SemanticMLP(branch_config).init(rng, dummy))["params"]
  return branch_config, new_params
