"""The SigLIP vision tower in Flax Linen: SigLIP v1 (`SiglipVisionModel`) and Siglip2 NaFlex (`Siglip2VisionModel`).

Patch embedding + learned position table -> pre-LN encoder layers (bidirectional MHA,
tanh-GELU MLP) -> post-LayerNorm -> attention-pooling head; every hidden state is
returned. Image preprocessing, TA-Tok and checkpoint conversion live elsewhere.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from planx_jax.kernels.attention import attention
from planx_jax.models import params as param_utils
from planx_jax.models.layers import Einsum, dtype_of
from planx_jax.models.resize import resize_grid
from planx_jax.models.siglip_config import SigLIPConfig

V1_POSITION_RESIZE = "bicubic"  # transformers' SiglipVisionEmbeddings.interpolate_pos_encoding
NAFLEX_POSITION_RESIZE = "bilinear_antialias"  # Siglip2VisionEmbeddings.resize_positional_embeddings


class LayerNorm(nn.Module):
  """Affine LayerNorm over the last axis, computed in fp32 and cast to the compute dtype."""

  eps: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (width,),
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (width,),
                      self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def _norm(cfg: SigLIPConfig, name: str) -> LayerNorm:
  return LayerNorm(cfg.layer_norm_eps, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name=name)


def _dense(cfg: SigLIPConfig, x: jax.Array, features: int, axes: tuple[str, str], name: str) -> jax.Array:
  """x [..., in] @ kernel [in, out] + bias [out]; call inside a compact method."""
  return Einsum("...i,io->...o", (x.shape[-1], features), axes, (features,), (axes[1],), dtype=dtype_of(cfg.dtype),
                param_dtype=dtype_of(cfg.param_dtype), name=name)(x)


class MLP(nn.Module):
  """fc1 -> tanh-approximate GELU (fp32) -> fc2."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = _dense(cfg, x, cfg.intermediate_size, ("embed", "mlp"), "fc1")  # [B, T, I]
    h = jax.nn.gelu(h.astype(jnp.float32), approximate=True).astype(dtype_of(cfg.dtype))
    return _dense(cfg, h, cfg.hidden_size, ("mlp", "embed"), "fc2")  # [B, T, H]


class Attention(nn.Module):
  """Multi-head attention with q/k/v/o biases, scale head_dim^-0.5; keys/values from `context` if given."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    width, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim

    def proj(name):
      return Einsum("btd,dnh->btnh", (width, n, d), ("embed", "heads", "head_dim"), (n, d), ("heads", "head_dim"),
                    dtype=dtype, param_dtype=pdtype, name=name)

    source = x if context is None else context
    q = proj("q")(x)  # [B, T, N, Dh]
    k = proj("k")(source)  # [B, S, N, Dh]
    v = proj("v")(source)  # [B, S, N, Dh]
    out = attention(q, k, v, causal=False, impl=cfg.attention_impl)  # [B, T, N, Dh]
    b, t = out.shape[:2]
    return Einsum("btf,fd->btd", (n, d, width), ("heads", "head_dim", "embed"), (width,), ("embed",), dtype=dtype,
                  param_dtype=pdtype, einsum_shape=(n * d, width), name="o")(out.reshape(b, t, n * d))


class EncoderLayer(nn.Module):
  """x + attn(ln1(x)), then + mlp(ln2(x))."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    x = x + Attention(cfg, name="self_attn")(_norm(cfg, "layer_norm1")(x))
    return x + MLP(cfg, name="mlp")(_norm(cfg, "layer_norm2")(x))


class PoolingHead(nn.Module):
  """Attention pooling: a learned probe [1, 1, H] attends over the tokens; h + mlp(ln(h)); returns [B, H]."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "embed")),
                       (1, 1, cfg.hidden_size), dtype_of(cfg.param_dtype))
    queries = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, cfg.hidden_size))  # [B, 1, H]
    h = Attention(cfg, name="attention")(queries, x)  # [B, 1, H]
    h = h + MLP(cfg, name="mlp")(_norm(cfg, "layernorm")(h))
    return h[:, 0]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C], each patch flattened (row, column, channel), as Siglip2's image
  processor flattens patches (and as a [p, p, C, hidden] conv kernel reads them). Trailing pixels that do
  not fill a patch are dropped, like a stride-p 'valid' convolution."""
  b, height, width, c = images.shape
  h, w = height // patch_size, width // patch_size
  x = images[:, : h * patch_size, : w * patch_size]
  x = x.reshape(b, h, patch_size, w, patch_size, c).transpose(0, 1, 3, 2, 4, 5)  # [B, h, w, p, p, C]
  return x.reshape(b, h, w, patch_size * patch_size * c)


class SigLIPVision(nn.Module):
  """SigLIP vision tower.

  `apply({"params": p}, images, *, interpolate_pos_encoding=False, num_layers=None)` returns
  {"hidden_states": (embeddings, layer 1 output, ...) each [B, N, H] (transformers' order),
  "last_hidden_state": post-LayerNorm [B, N, H] or None, "pooled": head output [B, H] or None}.

  images: [B, H, W, C] channels-last, already normalised to [-1, 1]. Tokens are the patch
  grid flattened row-major. v1: a stride-p conv; a patch grid other than the table's
  needs `interpolate_pos_encoding=True` (bicubic table resize, as transformers). NaFlex:
  H and W must be multiples of patch_size; the table is resized (bilinear, antialiased,
  fp32) to the patch grid; every patch is valid (no padding masks, unlike Siglip2's
  padded batches). `num_layers=k` runs only the first k layers: k + 1 hidden states,
  and last_hidden_state / pooled are None unless k is the full depth.
  """

  config: SigLIPConfig

  def _check_inputs(self, images, interpolate_pos_encoding: bool, num_layers) -> tuple[int, int, int]:
    cfg = self.config
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C] (channels last), got shape {tuple(images.shape)}")
    _, height, width, channels = images.shape
    if channels != cfg.num_channels:
      raise ValueError(f"images have {channels} channels, the tower expects num_channels={cfg.num_channels}")
    p = cfg.patch_size
    if height < p or width < p:
      raise ValueError(f"images of {height}x{width} are smaller than one {p}x{p} patch")
    if cfg.naflex and (height % p or width % p):
      raise ValueError(f"NaFlex images must be multiples of patch_size {p}, got {height}x{width}")
    grid = (height // p, width // p)
    if not cfg.naflex and grid != (cfg.grid_size, cfg.grid_size) and not interpolate_pos_encoding:
      raise ValueError(f"images of {height}x{width} give a {grid[0]}x{grid[1]} patch grid but the position table is "
                       f"{cfg.grid_size}x{cfg.grid_size} (image_size {cfg.image_size}); pass "
                       "interpolate_pos_encoding=True to resize the table")
    depth = cfg.num_layers if num_layers is None else num_layers
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 < depth <= cfg.num_layers:
      raise ValueError(f"num_layers must be an int in [1, {cfg.num_layers}], got {num_layers!r}")
    return grid[0], grid[1], depth

  def _positions(self, grid_h: int, grid_w: int) -> jax.Array:
    """The position table for a grid_h x grid_w patch grid, [grid_h * grid_w, H] in the param dtype."""
    cfg = self.config
    side, width = cfg.grid_size, cfg.hidden_size
    table = self.param("position_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(width**-0.5), (None, "embed")), (cfg.num_positions, width), dtype_of(cfg.param_dtype))
    if (grid_h, grid_w) == (side, side):
      return table
    method = NAFLEX_POSITION_RESIZE if cfg.naflex else V1_POSITION_RESIZE
    resized = resize_grid(table.reshape(side, side, width), (grid_h, grid_w), method)  # [h, w, H]
    return resized.reshape(grid_h * grid_w, width)

  @nn.compact
  def __call__(self, images: jax.Array, *, interpolate_pos_encoding: bool = False,
               num_layers: int | None = None) -> dict:
    cfg = self.config
    grid_h, grid_w, depth = self._check_inputs(images, interpolate_pos_encoding, num_layers)
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    b, p, c, width = images.shape[0], cfg.patch_size, cfg.num_channels, cfg.hidden_size

    patches = patchify(images, p).reshape(b, grid_h * grid_w, cfg.patch_dim)  # [B, N, p*p*C]
    if cfg.naflex:  # Linear over flattened patches: kernel [p*p*C, H]
      kernel_shape, kernel_axes, einsum_shape = (cfg.patch_dim, width), (None, "embed"), None
    else:  # conv kernel [p, p, C, H] (HWIO), read as [p*p*C, H]
      kernel_shape, kernel_axes, einsum_shape = (p, p, c, width), (None, None, None, "embed"), (cfg.patch_dim, width)
    embeds = Einsum("bnk,kd->bnd", kernel_shape, kernel_axes, (width,), ("embed",), dtype=dtype, param_dtype=pdtype,
                    out_dtype=jnp.float32, einsum_shape=einsum_shape, name="patch_embedding")(patches)  # [B, N, H]
    x = (embeds + self._positions(grid_h, grid_w).astype(jnp.float32)).astype(dtype)  # [B, N, H]

    hidden_states = [x]
    for i in range(depth):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x)
      hidden_states.append(x)
    last_hidden_state = pooled = None
    if depth == cfg.num_layers:
      last_hidden_state = _norm(cfg, "post_layernorm")(x)
      if cfg.use_head:
        pooled = PoolingHead(cfg, name="head")(last_hidden_state)
    return {"hidden_states": tuple(hidden_states), "last_hidden_state": last_hidden_state, "pooled": pooled}


def example_images(config: SigLIPConfig, batch: int = 1) -> jax.ShapeDtypeStruct:
  """The input shape params are initialised with: the table's native grid of patches."""
  side = config.grid_size * config.patch_size if config.naflex else config.image_size
  return jax.ShapeDtypeStruct((batch, side, side, config.num_channels), jnp.float32)


def _boxed_init(config: SigLIPConfig):
  spec = example_images(config)
  return lambda rng: SigLIPVision(config).init(rng, jnp.zeros(spec.shape, spec.dtype))


def init_params(config: SigLIPConfig, rng: jax.Array) -> dict:
  """Random params (plain nested dict) for every layer and the head."""
  return param_utils.init_params(_boxed_init(config), rng)


def abstract_params(config: SigLIPConfig) -> dict:
  """Param tree of `jax.ShapeDtypeStruct`, nothing allocated."""
  return param_utils.abstract_params(_boxed_init(config))


def param_logical_axes(config: SigLIPConfig) -> dict:
  """Param tree of logical-axis `PartitionSpec`s ("embed", "heads", "head_dim", "mlp", "norm")."""
  return param_utils.param_logical_axes(_boxed_init(config))
