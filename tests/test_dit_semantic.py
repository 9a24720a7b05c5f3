"""Plan-X's semantic branch on the Wan DiT: copies, exact base behaviour, Eq. 6-7 against materialised
logits, RoPE on the semantic segment only, scaled positions, and stage-1 freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from planx_jax import dit
from planx_jax.kernels.attention.reference import split_cross_attention_logits, xla_split_cross_attention
from planx_jax.models.rope import apply_rope_interleaved, rope3d_tables

SEM_DIM = 10


@pytest.fixture(scope="module")
def base(wan_dit_dir):
  return dit.load_diffusers(wan_dit_dir("h3_d12"))


@pytest.fixture(scope="module")
def branched(base):
  return dit.add_semantic_branch(*base, SEM_DIM, rng=jax.random.key(1))


def _inputs(config, seed=0, num_semantic=6):
  rng = np.random.RandomState(seed)
  latents = jnp.asarray(rng.randn(2, 3, 6, 10, config.in_channels), jnp.float32)
  timestep = jnp.asarray([300.0, 700.0])
  text = jnp.asarray(rng.randn(2, 5, config.text_dim), jnp.float32)
  semantic = jnp.asarray(rng.randn(2, num_semantic, SEM_DIM), jnp.float32)
  positions = jnp.asarray(rng.rand(2, num_semantic, 3) * [2, 2, 4], jnp.float32)
  return latents, timestep, text, semantic, positions


def test_branch_starts_as_exact_copies_of_the_text_projections(base, branched):
  _, params = branched
  cross = params["blocks"]["cross_attn"]
  for new, old in (("k_sem", "k"), ("v_sem", "v"), ("norm_k_sem", "norm_k")):
    for leaf in cross[old]:
      np.testing.assert_array_equal(np.asarray(cross[new][leaf]), np.asarray(cross[old][leaf]))
  assert params["semantic_embedding"]["linear_1"]["kernel"].shape == (SEM_DIM, base[0].dim)
  assert "k_sem" not in base[1]["blocks"]["cross_attn"], "the input params must not be modified"
  with pytest.raises(ValueError, match="already has a semantic branch"):
    dit.add_semantic_branch(*branched, SEM_DIM)


def test_without_semantic_tokens_the_model_is_the_base_model(base, branched):
  latents, timestep, text, semantic, positions = _inputs(base[0])
  base_out = dit.DiT(base[0]).apply({"params": base[1]}, latents, timestep, text)
  none_out = dit.DiT(branched[0]).apply({"params": branched[1]}, latents, timestep, text)
  np.testing.assert_array_equal(np.asarray(none_out), np.asarray(base_out))
  masked = dit.DiT(branched[0]).apply({"params": branched[1]}, latents, timestep, text, semantic, positions,
                                      jnp.zeros(semantic.shape[:2], bool))
  np.testing.assert_array_equal(np.asarray(masked), np.asarray(base_out))
  used = dit.DiT(branched[0]).apply({"params": branched[1]}, latents, timestep, text, semantic, positions)
  assert float(jnp.max(jnp.abs(used - base_out))) > 1e-2


def _numpy_split_attention(q, q_rot, k_text, v_text, k_sem, v_sem, mask):
  """Materialised float64 logits [Q K_text^T | R(Q) R(K_sem)^T] / sqrt(d), one softmax, [V_text | V_sem]."""
  q, q_rot, k_text, v_text, k_sem, v_sem = (np.asarray(a, np.float64) for a in (q, q_rot, k_text, v_text, k_sem,
                                                                                 v_sem))
  d = q.shape[-1]
  logits = np.concatenate([np.einsum("btnd,bsnd->bnts", q, k_text), np.einsum("btnd,bsnd->bnts", q_rot, k_sem)],
                          axis=-1) / np.sqrt(d)
  keep = np.concatenate([np.ones(k_text.shape[:2], bool), mask], axis=1)[:, None, None, :]
  logits = np.where(keep, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnd->btnd", weights, np.concatenate([v_text, v_sem], axis=1))


def test_concatenated_softmax_equals_materialised_reference():
  rng = np.random.RandomState(3)
  q, q_rot = rng.randn(2, 7, 3, 12), rng.randn(2, 7, 3, 12)
  k_text, v_text = rng.randn(2, 5, 3, 12), rng.randn(2, 5, 3, 12)
  k_sem, v_sem = rng.randn(2, 4, 3, 12), rng.randn(2, 4, 3, 12)
  mask = np.array([[True, True, False, True], [False, True, True, True]])
  got = xla_split_cross_attention(*(jnp.asarray(a, jnp.float32) for a in (q, q_rot, k_text, v_text, k_sem, v_sem)),
                                  sem_mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), _numpy_split_attention(q, q_rot, k_text, v_text, k_sem, v_sem, mask),
                             atol=1e-5, rtol=0)


def test_cross_attention_block_matches_a_hand_computation(branched):
  """The DiT's semantic cross-attention, recomputed from its params with NumPy (Eq. 6-7)."""
  from planx_jax.models.dit import Attention
  from planx_jax.models.rope import video_rope_tables

  config, params = branched
  block = jax.tree.map(lambda a: np.asarray(a)[0], params["blocks"]["cross_attn"])
  rng = np.random.RandomState(4)
  x = rng.randn(1, 12, config.dim).astype(np.float32)  # tokens of a (1, 3, 4) grid
  text = rng.randn(1, 5, config.dim).astype(np.float32)
  sem = rng.randn(1, 4, config.dim).astype(np.float32)
  positions = (rng.rand(1, 4, 3) * 3).astype(np.float32)
  video_rope = video_rope_tables((1, 3, 4), config.head_dim)
  sem_rope = rope3d_tables(jnp.asarray(positions), config.head_dim)
  got = Attention(config, cross=True).apply({"params": block}, jnp.asarray(x), video_rope, jnp.asarray(text),
                                            jnp.asarray(sem), sem_rope, None)

  def linear(inp, name):
    return inp @ block[name]["kernel"].reshape(config.dim, -1) + block[name]["bias"].reshape(-1)

  def rms(inp, name):
    return inp / np.sqrt(np.mean(inp**2, -1, keepdims=True) + config.eps) * block[name]["scale"]

  heads = lambda a: a.reshape(*a.shape[:2], config.num_heads, config.head_dim)  # noqa: E731
  q = heads(rms(linear(x, "q"), "norm_q"))
  k_text, v_text = heads(rms(linear(text, "k"), "norm_k")), heads(linear(text, "v"))
  k_sem, v_sem = heads(rms(linear(sem, "k_sem"), "norm_k_sem")), heads(linear(sem, "v_sem"))
  q_rot = np.asarray(apply_rope_interleaved(jnp.asarray(q), *video_rope))
  k_sem = np.asarray(apply_rope_interleaved(jnp.asarray(k_sem), *sem_rope))
  out = _numpy_split_attention(q, q_rot, k_text, v_text, k_sem, v_sem, np.ones((1, 4), bool))
  expected = out.reshape(1, 12, -1) @ block["o"]["kernel"].reshape(-1, config.dim) + block["o"]["bias"]
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)


def test_rope_acts_on_the_semantic_segment_only():
  rng = np.random.RandomState(5)
  q = jnp.asarray(rng.randn(1, 6, 2, 12), jnp.float32)
  k_text, k_sem = jnp.asarray(rng.randn(1, 4, 2, 12), jnp.float32), jnp.asarray(rng.randn(1, 3, 2, 12), jnp.float32)
  video = rope3d_tables(jnp.asarray(rng.rand(1, 6, 3) * 4, jnp.float32), 12)
  q_rot = apply_rope_interleaved(q, *video)

  def logits(sem_positions):
    k_rot = apply_rope_interleaved(k_sem, *rope3d_tables(jnp.asarray(sem_positions, jnp.float32), 12))
    return np.asarray(split_cross_attention_logits(q, q_rot, k_text, k_rot))

  a, b = logits(rng.rand(1, 3, 3) * 4), logits(rng.rand(1, 3, 3) * 4 + 1.5)
  np.testing.assert_array_equal(a[..., :4], b[..., :4])  # text logits: unrotated, untouched
  assert np.abs(a[..., 4:] - b[..., 4:]).max() > 1e-3  # semantic logits move with the positions


def test_scaled_positions_for_a_704x1280_121_frame_video():
  grid = dit.video_token_grid(121, 704, 1280)
  assert grid == (31, 22, 40)
  positions = dit.semantic_positions(grid, keyframes=11)  # 2 FPS over 5 s: keyframes t' = 0..10
  assert positions.shape == (11 * 81, 3)
  first, last = positions[0], positions[-1]  # keyframe 0 cell (0, 0); keyframe 10 cell (8, 8)
  np.testing.assert_allclose(first, [0.0, 0.5 * 22 / 9 - 0.5, 0.5 * 40 / 9 - 0.5], rtol=1e-6)
  np.testing.assert_allclose(last, [30.0, 8.5 * 22 / 9 - 0.5, 8.5 * 40 / 9 - 0.5], rtol=1e-6)
  np.testing.assert_allclose(positions[81 * 4 + 9 * 4 + 4], [12.0, 10.5, 19.5], rtol=1e-6)  # keyframe 4, centre
  with pytest.raises(ValueError, match="outside the 31-frame grid"):
    dit.semantic_positions(grid, keyframes=[11])
  with pytest.raises(ValueError, match="does not fit the VAE stride"):
    dit.video_token_grid(120, 704, 1280)


def test_stage1_labels_freeze_everything_but_the_branch(branched):
  config, params = branched
  params = jax.tree.map(jnp.asarray, params)
  labels = dit.semantic_branch_labels(params)
  trainable = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(labels) if v == "trainable"]
  assert trainable and all(any(n in p for n in ("k_sem", "v_sem", "norm_k_sem", "semantic_embedding"))
                           for p in trainable)
  optimizer = optax.multi_transform({"trainable": optax.adam(1e-2), "frozen": optax.set_to_zero()}, labels)
  latents, timestep, text, semantic, positions = _inputs(config, seed=6)

  def loss(p):
    return jnp.mean(dit.DiT(config).apply({"params": p}, latents, timestep, text, semantic, positions) ** 2)

  grads = jax.grad(loss)(params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  new = optax.apply_updates(params, updates)
  for (path, old), new_leaf, label in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new),
                                          jax.tree.leaves(labels)):
    changed = not np.array_equal(np.asarray(old), np.asarray(new_leaf))
    assert changed == (label == "trainable"), jax.tree_util.keystr(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(positions=np.zeros((2, 6, 2), np.float32)), r"semantic_positions must be \[B, S, 3\] = \[2, 6, 3\]"),
    (dict(semantic=np.zeros((2, 6, 9), np.float32)), r"semantic must be \[B=2, S, semantic_in_dim=10\]"),
    (dict(mask=np.zeros((2, 5), bool)), r"semantic_mask must be \[B, S\] = \[2, 6\]"),
    (dict(positions=None), r"semantic_positions must be \[B, S, 3\].*got None"),
])
def test_bad_semantic_inputs_are_named(branched, kwargs, message):
  config, params = branched
  latents, timestep, text, semantic, positions = _inputs(config)
  semantic = kwargs.get("semantic", semantic)
  positions = kwargs.get("positions", positions)
  with pytest.raises(ValueError, match=message):
    dit.DiT(config).apply({"params": params}, latents, timestep, text, semantic, positions, kwargs.get("mask"))
