"""Tests for `DiTConfig.semantic_rope` (Plan-X Table 1's "w/o 3D RoPE" ablation) in the model, kernel and files.

A tiny random DiT with noise-scale weights; the kernel check is against a NumPy softmax over [text | semantic] keys.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax import dit
from planx_jax.kernels.attention import split_cross_attention
from planx_jax.models.dit_config import DiTConfig
from planx_jax.models.rope import identity_rope, rope3d_tables, video_rope_tables

SEMANTIC_DIM = 8


def _config(semantic_rope: bool) -> DiTConfig:
  return DiTConfig.tiny(semantic_in_dim=SEMANTIC_DIM, attention_impl="xla", semantic_rope=semantic_rope)


def _noisy_params(config: DiTConfig, seed: int, scale: float = 0.3) -> dict:
  """The DiT's param tree with every leaf normal(0, scale) noise (norm scales around 1), so that attention logits
  are far from flat; built from `abstract_params` since `init_params`' values would all be overwritten."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(dit.abstract_params(config))
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    noise = (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
    out.append(jnp.asarray(noise + 1.0 if "norm" in jax.tree_util.keystr(path) else noise))
  return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture(scope="module")
def params():
  # The two configs differ only in semantic_rope, which creates no params: one set serves both.
  return _noisy_params(_config(True), seed=1)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(2)
  latents = rng.standard_normal((1, 2, 4, 4, 8)).astype(np.float32)
  text = rng.standard_normal((1, 5, 32)).astype(np.float32)
  semantic = rng.standard_normal((1, 6, SEMANTIC_DIM)).astype(np.float32)
  positions = rng.uniform(0.0, 2.0, (1, 6, 3)).astype(np.float32)
  return latents, np.array([500.0], np.float32), text, semantic, positions


@functools.partial(jax.jit, static_argnums=0)
def _apply(config: DiTConfig, params, latents, timestep, text, semantic, positions):
  return dit.DiT(config).apply({"params": params}, latents, timestep, text, semantic, positions)


def _velocity(config: DiTConfig, params, inputs, positions) -> np.ndarray:
  latents, timestep, text, semantic, _ = inputs
  return np.asarray(_apply(config, params, latents, timestep, text, semantic, positions))


def test_params_are_the_same_with_and_without_semantic_rope(params):
  shapes = jax.tree.map(lambda x: x.shape, dit.abstract_params(_config(False)))
  assert shapes == jax.tree.map(lambda x: x.shape, params)


def test_without_semantic_rope_the_semantic_positions_do_not_matter(params, inputs):
  positions = inputs[-1]
  moved = positions[:, ::-1] + np.float32(1.5)
  config = _config(False)
  base = _velocity(config, params, inputs, positions)
  np.testing.assert_array_equal(base, _velocity(config, params, inputs, moved))
  np.testing.assert_array_equal(base, _velocity(config, params, inputs, np.zeros_like(positions)))


def test_with_semantic_rope_the_semantic_positions_matter(params, inputs):
  positions = inputs[-1]
  moved = positions[:, ::-1] + np.float32(1.5)
  config = _config(True)
  assert np.max(np.abs(_velocity(config, params, inputs, positions) - _velocity(config, params, inputs, moved))) > 1e-4
  # Dropping the RoPE changes the output too (the video queries are no longer rotated for the semantic keys).
  assert np.max(np.abs(_velocity(config, params, inputs, positions)
                       - _velocity(_config(False), params, inputs, positions))) > 1e-4


def test_semantic_tokens_still_matter_without_rope(params, inputs):
  latents, timestep, text, semantic, positions = inputs
  config = _config(False)
  other = (latents, timestep, text, semantic[:, ::-1] * np.float32(-1.0), positions)
  base = _velocity(config, params, inputs, positions)
  assert np.max(np.abs(base - _velocity(config, params, other, positions))) > 1e-4


def _numpy_concat_attention(q, k, v, mask=None) -> np.ndarray:
  """softmax(q k^T / sqrt(D)) v over all keys, fp64; q [B, T, N, D], k / v [B, S, N, D], mask [B, S]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])  # [B, N, T, S]
  if mask is not None:
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
  weights /= weights.sum(axis=-1, keepdims=True)
  return np.einsum("bnts,bsnd->btnd", weights, v)  # [B, T, N, D]


def _kernel_inputs(seed: int = 3):
  rng = np.random.default_rng(seed)
  b, t, n, d, s_text, s_sem = 2, 16, 4, 12, 5, 6
  shape = lambda s: (b, s, n, d)  # noqa: E731
  q, k_text, v_text, k_sem, v_sem = (rng.standard_normal(shape(s)).astype(np.float32)
                                     for s in (t, s_text, s_text, s_sem, s_sem))
  q_rope = tuple(jnp.asarray(a) for a in video_rope_tables((1, 4, 4), d))  # [T, D/2]
  k_sem_rope = rope3d_tables(jnp.asarray(rng.uniform(0, 3, (b, s_sem, 3)), jnp.float32), d)  # [B, S_sem, D/2]
  return q, k_text, v_text, k_sem, v_sem, q_rope, k_sem_rope


def test_identity_rope_tables():
  cos, sin = rope3d_tables(jnp.asarray(np.random.default_rng(4).uniform(0, 3, (2, 6, 3)), jnp.float32), 12)
  one, zero = identity_rope((cos, sin))
  assert one.shape == cos.shape and zero.shape == sin.shape
  np.testing.assert_array_equal(np.asarray(one), 1.0)
  np.testing.assert_array_equal(np.asarray(zero), 0.0)


@pytest.mark.parametrize("masked", [False, True])
def test_split_cross_attention_with_identity_rope_is_plain_attention_over_both_segments(masked):
  q, k_text, v_text, k_sem, v_sem, q_rope, k_sem_rope = _kernel_inputs()
  mask = np.array([[True] * 6, [True, False, True, True, False, True]]) if masked else None
  out = split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=identity_rope(q_rope),
                              k_sem_rope=identity_rope(k_sem_rope), rope_style="interleaved",
                              sem_mask=None if mask is None else jnp.asarray(mask), impl="xla")
  full_mask = None if mask is None else np.concatenate([np.ones((2, 5), bool), mask], axis=1)
  expected = _numpy_concat_attention(q, np.concatenate([k_text, k_sem], 1), np.concatenate([v_text, v_sem], 1),
                                     full_mask)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
  # With the real tables the semantic segment is rotated and the result is not plain attention.
  rotated = split_cross_attention(q, k_text, v_text, k_sem, v_sem, q_rope=q_rope, k_sem_rope=k_sem_rope,
                                  rope_style="interleaved", sem_mask=None if mask is None else jnp.asarray(mask),
                                  impl="xla")
  assert np.max(np.abs(np.asarray(rotated) - expected)) > 1e-3


@pytest.mark.parametrize("semantic_rope", [False, True])
def test_diffusers_round_trip_keeps_semantic_rope(params, tmp_path, semantic_rope):
  config = _config(semantic_rope)
  dit.save_diffusers(config, params, tmp_path / "out")
  saved = json.loads((tmp_path / "out" / "semantic_branch.json").read_text())
  assert saved == {"semantic_in_dim": SEMANTIC_DIM, "semantic_rope": semantic_rope}
  loaded, again = dit.load_diffusers(tmp_path / "out", attention_impl="xla")
  assert loaded.semantic_rope is semantic_rope
  assert loaded.semantic_in_dim == SEMANTIC_DIM
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, again)


def test_semantic_branch_json_without_the_key_loads_with_rope(params, tmp_path):
  dit.save_diffusers(_config(False), params, tmp_path / "out")
  (tmp_path / "out" / "semantic_branch.json").write_text(json.dumps({"semantic_in_dim": SEMANTIC_DIM}) + "\n")
  loaded, _ = dit.load_diffusers(tmp_path / "out")
  assert loaded.semantic_rope is True
