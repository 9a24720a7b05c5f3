"""MMDiT with Plan-X's semantic keys appended (Eq. 5): joint attention against a NumPy float64 oracle, the
branch initialisation, masks, RoPE alignment, gradients and input errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.models.mmdit import (JointAttention, MMDiT, MMDiTConfig, add_semantic_branch, init_params, patchify,
                                    timestep_embedding, unpatchify)
from planx_jax.models.rope import rope3d_tables

CFG = MMDiTConfig.tiny()
B, F, H, W = 2, 2, 4, 6
GRID = (F, H // 2, W // 2)  # latent-token grid with patch (1, 2, 2)
L = int(np.prod(GRID))
T, S, SEM_DIM = 5, 4, 12
SEM_NAMES = ("k_sem", "v_sem", "norm_k_sem")


def _trained_like(seed):
  """Base params with every leaf N(0, 0.2) (norm scales 1 + N(0, 0.2)): a stand-in for trained weights, since the
  adaLN-zero init makes every block the identity and the output zero, which would hide the attention."""
  shapes = jax.eval_shape(functools.partial(init_params, CFG), jax.random.key(0))
  rng = np.random.RandomState(seed)

  def leaf(path, shape):
    noise = (0.2 * rng.randn(*shape.shape)).astype(shape.dtype)
    return jnp.asarray(noise + 1 if jax.tree_util.keystr(path).endswith("['scale']") else noise)

  return jax.tree.map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def models():
  base = _trained_like(1)
  sem_cfg, sem_params = add_semantic_branch(CFG, base, SEM_DIM, jax.random.key(2))
  return base, sem_cfg, sem_params


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  latents = rng.randn(B, F, H, W, CFG.in_channels).astype(np.float32)
  timestep = np.array([250.0, 900.0], np.float32)
  text = rng.randn(B, T, CFG.text_dim).astype(np.float32)
  semantic = rng.randn(B, S, SEM_DIM).astype(np.float32)
  # Inside the latent-token grid, like Plan-X's scaled keyframe positions (keyframe t', cell centres).
  positions = (rng.rand(B, S, 3) * np.array(GRID)).astype(np.float32)
  mask = np.array([[True, True, False, True], [False, True, True, True]])
  return latents, timestep, text, semantic, positions, mask


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, params, *args):
  return MMDiT(cfg).apply({"params": params}, *args)


def _forward(cfg, params, latents, timestep, text, semantic=None, positions=None, mask=None):
  args = [jnp.asarray(x) if x is not None else None for x in (latents, timestep, text, semantic, positions, mask)]
  return np.asarray(_apply(cfg, params, *args))


# --- NumPy float64 oracle of one block's joint attention -----------------------------------------------


def _np_proj(x, p):
  return np.einsum("bld,dnh->blnh", x, np.float64(p["kernel"])) + np.float64(p["bias"])


def _np_rms(x, p, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.float64(p["scale"])


def _np_rope(x, positions, theta):
  """Interleaved pairs, head_dim split t / h / w = (d - 4 (d // 6), 2 (d // 6), 2 (d // 6)); float64."""
  d = x.shape[-1]
  dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
  angles = np.concatenate([positions[..., a, None] * theta ** (-np.arange(0, dim, 2) / dim)
                           for a, dim in enumerate(dims)], axis=-1)[:, :, None, :]  # [B, L, 1, D/2]
  out = np.empty_like(x)
  out[..., 0::2] = x[..., 0::2] * np.cos(angles) - x[..., 1::2] * np.sin(angles)
  out[..., 1::2] = x[..., 0::2] * np.sin(angles) + x[..., 1::2] * np.cos(angles)
  return out


def _np_joint_attention(p, text, video, video_pos, semantic, sem_pos, mask, eps, theta, pre_only):
  tp, vp = p["text"], p["video"]
  q_video = _np_rope(_np_rms(_np_proj(video, vp["q"]), vp["norm_q"], eps), video_pos, theta)
  k_video = _np_rope(_np_rms(_np_proj(video, vp["k"]), vp["norm_k"], eps), video_pos, theta)
  k_sem = _np_rope(_np_rms(_np_proj(semantic, p["k_sem"]), p["norm_k_sem"], eps), sem_pos, theta)
  k_text = _np_rms(_np_proj(text, tp["k"]), tp["norm_k"], eps)
  q = q_video if pre_only else np.concatenate([_np_rms(_np_proj(text, tp["q"]), tp["norm_q"], eps), q_video], 1)
  k = np.concatenate([k_text, k_sem, k_video], axis=1)
  v = np.concatenate([_np_proj(text, tp["v"]), _np_proj(semantic, p["v_sem"]), _np_proj(video, vp["v"])], axis=1)
  logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  keep = np.concatenate([np.ones(text.shape[:2], bool), mask, np.ones(video.shape[:2], bool)], axis=1)
  logits = np.where(keep[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  out = np.einsum("bnqk,bknh->bqnh", weights / weights.sum(-1, keepdims=True), v)

  def out_proj(x, po):
    return x.reshape(*x.shape[:2], -1) @ np.float64(po["kernel"]).reshape(-1, po["kernel"].shape[-1]) + po["bias"]

  text_out = None if pre_only else out_proj(out[:, :text.shape[1]], tp["o"])
  return text_out, out_proj(out[:, -video.shape[1]:], vp["o"])


def _grid_positions():
  return np.stack(np.meshgrid(*(np.arange(n) for n in GRID), indexing="ij"), axis=-1).reshape(-1, 3)


@pytest.mark.parametrize("block", [0, 1])  # block 1 is the last one: text gives keys and values only
def test_joint_attention_matches_numpy_oracle(models, block):
  _, sem_cfg, params = models
  attn_params = params[f"blocks_{block}"]["attn"]
  rng = np.random.RandomState(3)
  d = sem_cfg.hidden_size
  text, video, semantic = (rng.randn(B, n, d).astype(np.float32) for n in (T, L, S))
  _, _, _, _, sem_pos, mask = _inputs()
  video_pos = np.broadcast_to(_grid_positions(), (B, L, 3)).astype(np.float32)
  pre_only = block == sem_cfg.num_layers - 1
  video_rope = rope3d_tables(jnp.asarray(video_pos), sem_cfg.head_dim, sem_cfg.rope_theta)
  sem_rope = rope3d_tables(jnp.asarray(sem_pos), sem_cfg.head_dim, sem_cfg.rope_theta)
  got_text, got_video = jax.jit(JointAttention(sem_cfg, pre_only).apply)(
      {"params": attn_params}, jnp.asarray(text), jnp.asarray(video), video_rope, jnp.asarray(semantic), sem_rope,
      jnp.asarray(mask))
  np_params = jax.tree.map(np.asarray, attn_params)
  want_text, want_video = _np_joint_attention(np_params, text.astype(np.float64), video.astype(np.float64),
                                              video_pos.astype(np.float64), semantic.astype(np.float64),
                                              sem_pos.astype(np.float64), mask, sem_cfg.eps, sem_cfg.rope_theta,
                                              pre_only)
  np.testing.assert_allclose(np.asarray(got_video), want_video, atol=1e-5, rtol=0)
  if pre_only:
    assert got_text is None
  else:
    np.testing.assert_allclose(np.asarray(got_text), want_text, atol=1e-5, rtol=0)


# --- branch initialisation -------------------------------------------------------------------------------


def test_branch_projections_are_exact_copies_of_text(models):
  base, sem_cfg, params = models
  assert sem_cfg.semantic_in_dim == SEM_DIM and CFG.semantic_in_dim is None
  assert "semantic_embedding" not in base and all("k_sem" not in base[f"blocks_{i}"]["attn"] for i in range(2))
  for i in range(CFG.num_layers):
    attn = params[f"blocks_{i}"]["attn"]
    for sem_name, text_name in zip(SEM_NAMES, ("k", "v", "norm_k")):
      sem_leaves, sem_tree = jax.tree.flatten_with_path(attn[sem_name])
      text_leaves, text_tree = jax.tree.flatten_with_path(attn["text"][text_name])
      assert sem_tree == text_tree
      for (path, sem_leaf), (_, text_leaf) in zip(sem_leaves, text_leaves):
        assert sem_leaf.dtype == text_leaf.dtype, (i, sem_name, path)
        np.testing.assert_array_equal(np.asarray(sem_leaf), np.asarray(text_leaf), err_msg=f"{i} {sem_name} {path}")
        assert sem_leaf is not text_leaf  # own buffer: donating the params does not donate one buffer twice
  mlp = params["semantic_embedding"]
  assert mlp["linear_1"]["kernel"].shape == (SEM_DIM, CFG.hidden_size)
  assert mlp["linear_2"]["kernel"].shape == (CFG.hidden_size, CFG.hidden_size)
  assert float(jnp.std(mlp["linear_1"]["kernel"])) > 0.01  # random, not zero


def test_add_semantic_branch_rejects_bad_input(models):
  base, sem_cfg, params = models
  with pytest.raises(ValueError, match="already has a semantic branch"):
    add_semantic_branch(sem_cfg, params, SEM_DIM, jax.random.key(0))
  with pytest.raises(ValueError, match="semantic_in_dim"):
    add_semantic_branch(CFG, base, 0, jax.random.key(0))
  broken = {**base, "blocks_1": {**base["blocks_1"], "attn": {"video": base["blocks_1"]["attn"]["video"]}}}
  with pytest.raises(ValueError, match="blocks_1/attn/text/k"):
    add_semantic_branch(CFG, broken, SEM_DIM, jax.random.key(0))


def test_without_semantics_the_model_is_the_base_model(models):
  base, sem_cfg, params = models
  latents, timestep, text, *_ = _inputs()
  want = _forward(CFG, base, latents, timestep, text)
  np.testing.assert_array_equal(_forward(sem_cfg, params, latents, timestep, text), want)
  assert np.abs(want).max() > 0.1


def test_fresh_branch_with_all_tokens_masked_reproduces_base(models):
  base, sem_cfg, params = models
  latents, timestep, text, semantic, positions, _ = _inputs()
  want = _forward(CFG, base, latents, timestep, text)
  got = _forward(sem_cfg, params, latents, timestep, text, semantic, positions, np.zeros((B, S), bool))
  # Not bitwise: the softmax sums run over more (exactly zero) terms. 1e-6 of the output's scale (about 4).
  np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max(), rtol=0)
  unmasked = _forward(sem_cfg, params, latents, timestep, text, semantic, positions, np.ones((B, S), bool))
  assert np.abs(unmasked - want).max() > 1e-3  # the fresh branch is live once tokens are visible


def test_masked_tokens_equal_absent_tokens(models):
  _, sem_cfg, params = models
  latents, timestep, text, semantic, positions, _ = _inputs()
  keep = np.array([[True, False, True, False]] * B)
  got = _forward(sem_cfg, params, latents, timestep, text, semantic, positions, keep)
  want = _forward(sem_cfg, params, latents, timestep, text, semantic[:, [0, 2]], positions[:, [0, 2]])
  np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max(), rtol=0)


# --- 3D RoPE on semantic keys ----------------------------------------------------------------------------


def test_semantic_positions_change_the_output(models):
  _, sem_cfg, params = models
  latents, timestep, text, semantic, positions, mask = _inputs()
  before = _forward(sem_cfg, params, latents, timestep, text, semantic, positions, mask)
  moved = positions.copy()
  moved[:, 1] += np.array([1.0, -1.5, 2.0], np.float32)  # token 1 is visible in both rows
  after = _forward(sem_cfg, params, latents, timestep, text, semantic, moved, mask)
  assert np.abs(after - before).max() > 1e-3


def _video_logits(sem_cfg, attn_params, text, video, semantic, video_pos, sem_pos):
  """Logits [B, N, L, S + L] of video queries against semantic and video keys, from the module's q and k."""
  video_rope = rope3d_tables(jnp.asarray(video_pos), sem_cfg.head_dim, sem_cfg.rope_theta)
  sem_rope = rope3d_tables(jnp.asarray(sem_pos), sem_cfg.head_dim, sem_cfg.rope_theta)
  q, k, _, _ = JointAttention(sem_cfg).apply({"params": attn_params}, text, video, video_rope, semantic, sem_rope,
                                             method="qkv")
  q, k = np.asarray(q, np.float64)[:, T:], np.asarray(k, np.float64)[:, T:]
  return np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])


@pytest.mark.parametrize("offset", [(3.0, 0.0, 0.0), (2.5, -1.0, 4.0)])
def test_rope_logits_depend_on_relative_positions_only(models, offset):
  _, sem_cfg, params = models
  attn_params = params["blocks_0"]["attn"]
  rng = np.random.RandomState(4)
  text, video, semantic = (jnp.asarray(rng.randn(B, n, sem_cfg.hidden_size).astype(np.float32)) for n in (T, L, S))
  sem_pos = _inputs()[4]
  video_pos = np.broadcast_to(_grid_positions(), (B, L, 3)).astype(np.float32)
  shift = np.array(offset, np.float32)
  want = _video_logits(sem_cfg, attn_params, text, video, semantic, video_pos, sem_pos)
  both = _video_logits(sem_cfg, attn_params, text, video, semantic, video_pos + shift, sem_pos + shift)
  np.testing.assert_allclose(both, want, atol=1e-4, rtol=0)
  semantic_only = _video_logits(sem_cfg, attn_params, text, video, semantic, video_pos, sem_pos + shift)
  assert np.abs(semantic_only[..., :S] - want[..., :S]).max() > 1e-2


# --- gradients and errors --------------------------------------------------------------------------------


def test_gradients_reach_the_semantic_branch(models):
  """Stage 1 trains the branch on a frozen base: gradients w.r.t. the branch params and the embeddings."""
  _, sem_cfg, params = models
  latents, timestep, text, semantic, positions, mask = (jnp.asarray(x) for x in _inputs())
  blocks = [f"blocks_{i}" for i in range(sem_cfg.num_layers)]
  branch = {"semantic_embedding": params["semantic_embedding"],
            **{block: {name: params[block]["attn"][name] for name in SEM_NAMES} for block in blocks}}

  def loss(branch, sem):
    p = {**params, "semantic_embedding": branch["semantic_embedding"],
         **{block: {**params[block], "attn": {**params[block]["attn"], **branch[block]}} for block in blocks}}
    return jnp.mean(MMDiT(sem_cfg).apply({"params": p}, latents, timestep, text, sem, positions, mask) ** 2)

  grads, sem_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(branch, semantic)
  assert jax.tree.structure(grads) == jax.tree.structure(branch)
  for path, leaf in jax.tree.flatten_with_path(grads)[0]:
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0, jax.tree_util.keystr(path)
  sem_grads = np.abs(np.asarray(sem_grads)).max(axis=-1)  # [B, S]
  np.testing.assert_array_equal(sem_grads[~mask], 0.0)  # masked tokens have zero attention weight
  assert np.all(sem_grads[mask] > 0)


@pytest.mark.parametrize("change, match", [
    (dict(latents=(B, F, H, W, 3)), "3 channels"),
    (dict(latents=(B, F, 5, W, 4)), "H = 5"),
    (dict(latents=(B, H, W, 4)), r"\[B, F, H, W, C\]"),
    (dict(semantic=(B, S, SEM_DIM + 1)), "semantic_in_dim=12"),
    (dict(positions=(B, S, 2)), "semantic_positions"),
    (dict(positions=(B, S + 1, 3)), "semantic_positions"),
    (dict(mask=(B, S + 1)), "semantic_mask"),
    (dict(text=(B, T, CFG.text_dim + 1)), "text_dim=24"),
    (dict(timestep=(B, 1)), "timestep"),
])
def test_bad_inputs_raise(models, change, match):
  _, sem_cfg, params = models
  shapes = dict(latents=(B, F, H, W, 4), timestep=(B,), text=(B, T, CFG.text_dim), semantic=(B, S, SEM_DIM),
                positions=(B, S, 3), mask=(B, S))
  shapes.update(change)
  args = [jnp.zeros(shape, bool if name == "mask" else jnp.float32) for name, shape in shapes.items()]
  with pytest.raises(ValueError, match=match):
    MMDiT(sem_cfg).apply({"params": params}, *args)


def test_semantic_inputs_need_a_branch_and_positions(models):
  base, sem_cfg, params = models
  latents, timestep, text, semantic, positions, _ = _inputs()
  with pytest.raises(ValueError, match="no semantic branch"):
    _forward(CFG, base, latents, timestep, text, semantic, positions)
  with pytest.raises(ValueError, match="semantic_positions"):
    _forward(sem_cfg, params, latents, timestep, text, semantic)
  with pytest.raises(ValueError, match="without semantic embeddings"):
    _forward(sem_cfg, params, latents, timestep, text, None, positions)


# --- config and layout -----------------------------------------------------------------------------------


def test_config_validation_and_dict_round_trip():
  cfg = MMDiTConfig.from_dict(dict(patch_size=[1, 2, 2]), base=CFG)
  assert cfg.patch_size == (1, 2, 2) and cfg == CFG
  assert MMDiTConfig.from_dict(CFG.replace(semantic_in_dim=7).to_dict()).semantic_in_dim == 7
  assert MMDiTConfig.preset("tiny") == CFG and CFG.hidden_size == 32
  for bad, match in [(dict(head_dim=5), "head_dim"), (dict(patch_size=(1, 0, 2)), "patch_size"),
                     (dict(num_layers=0), "num_layers"), (dict(freq_dim=31), "freq_dim"),
                     (dict(attention_impl="flash"), "attention_impl"), (dict(dtype="float8"), "dtype"),
                     (dict(num_blocks=2), "num_blocks")]:
    with pytest.raises(ValueError, match=match):
      CFG.replace(**bad)
  with pytest.raises(ValueError, match="preset"):
    MMDiTConfig.preset("seedance")


def test_patchify_follows_the_rope_grid_and_inverts():
  latents = np.random.RandomState(5).randn(B, F, H, W, 3).astype(np.float32)
  tokens = np.asarray(patchify(jnp.asarray(latents), (1, 2, 2)))  # [B, L, 12]
  for index, (f, h, w) in enumerate(_grid_positions()):
    np.testing.assert_array_equal(tokens[:, index], latents[:, f, 2 * h:2 * h + 2, 2 * w:2 * w + 2].reshape(B, -1))
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tokens), GRID, (1, 2, 2))), latents)


def test_timestep_embedding_is_cos_then_sin():
  t = np.array([0.0, 1.0, 999.0])
  omega = 10000.0 ** (-np.arange(16) / 16)
  want = np.concatenate([np.cos(t[:, None] * omega), np.sin(t[:, None] * omega)], axis=-1)
  np.testing.assert_allclose(np.asarray(timestep_embedding(jnp.asarray(t, jnp.float32), 32)), want, atol=2e-4)


def test_fresh_model_is_adaln_zero():
  latents, timestep, text, *_ = _inputs()
  params = init_params(CFG, jax.random.key(7))
  out = _forward(CFG, params, latents, timestep, text)
  assert out.shape == (B, F, H, W, CFG.out_channels)
  np.testing.assert_array_equal(out, 0.0)
