"""Planner sampling: KV-cache decoding against full recomputation, the plan grammar, logits filters, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from planx_jax.models.planner import Planner
from planx_jax.models.planner_config import PlannerConfig
from planx_jax.plan_tokens import PlanTokens
from planx_jax.sampling import (
    KEYFRAME_LEN,
    PAD_ID,
    PlanGrammar,
    SamplingConfig,
    filter_logits,
    generate,
    pad_prompts,
    plan_to_codes,
    sample_plans,
    sample_token,
    validate_plan,
)
from planx_jax.sampling.planner_decode import _sample_program

# 64 text ids (ChatML ids inside them), 5 plan markers, a 256-entry codebook; 81 codes per keyframe as in Plan-X.
PLAN_TOKENS = PlanTokens(text_vocab_size=64, codebook_size=256, chat_im_start=60, chat_im_end=61, endoftext=59)
NUM_NEW = 32


def build_planner(**overrides):
  # Untied head: with a tied tiny random model, greedy decoding just repeats the input token.
  config = PlannerConfig.tiny(vocab_size=PLAN_TOKENS.vocab_size, tie_word_embeddings=False, **overrides)
  params = nn.unbox(Planner(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
  return config, params


@pytest.fixture(scope="module")
def planner():
  return build_planner()


def random_prompts(rng, lengths, high=PLAN_TOKENS.text_vocab_size):
  return [rng.randint(0, high, n) for n in lengths]


def build_plan(codes, plan_tokens=PLAN_TOKENS):
  """Plan token ids written out by hand from codes [F-1, 81] (independent of PlanGrammar)."""
  ids = []
  for frame in codes:
    ids += [plan_tokens.im_start, plan_tokens.scale_token(2)]
    ids += [plan_tokens.code_offset + int(c) for c in frame]
    ids += [plan_tokens.im_end]
  return np.array(ids + [plan_tokens.chat_im_end])


# --- KV cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_kv_heads", [4, 1], ids=["mha", "gqa"])
def test_cached_greedy_decoding_matches_full_recomputation(num_kv_heads):
  config, params = build_planner(num_kv_heads=num_kv_heads)
  prompts = random_prompts(np.random.RandomState(num_kv_heads), [5, 11], config.vocab_size)
  out = generate(config, params, prompts, jax.random.key(0), SamplingConfig(temperature=0.0, max_new_tokens=NUM_NEW),
                 stop_token=None, return_logits=True)
  cached_tokens, cached_logits = np.asarray(out.tokens), np.asarray(out.logits)
  assert cached_tokens.shape == (2, NUM_NEW) and cached_logits.shape == (2, NUM_NEW, config.vocab_size)
  np.testing.assert_array_equal(np.asarray(out.lengths), [NUM_NEW, NUM_NEW])
  assert len(np.unique(cached_tokens)) > 10, "degenerate model: greedy decoding repeats itself"

  # Recompute without a cache: each row unpadded from slot 0, right-padded to one width in segment 0.
  width = max(len(p) for p in prompts) + NUM_NEW
  full_forward = jax.jit(lambda ids, segments: Planner(config).apply({"params": params}, ids, None, segments))
  ids = np.zeros((2, width), np.int32)
  for b, prompt in enumerate(prompts):
    ids[b, :len(prompt)] = prompt
  cursor = np.array([len(p) for p in prompts])
  for step in range(NUM_NEW):
    segments = (np.arange(width)[None] < cursor[:, None]).astype(np.int32)
    logits = np.asarray(full_forward(jnp.asarray(ids), jnp.asarray(segments)))[np.arange(2), cursor - 1]  # [2, V]
    np.testing.assert_allclose(cached_logits[:, step], logits, atol=1e-4, rtol=0)
    recomputed = logits.argmax(-1)
    np.testing.assert_array_equal(cached_tokens[:, step], recomputed)
    ids[np.arange(2), cursor] = recomputed
    cursor += 1


def test_stop_token_ends_rows_and_pads(planner):
  config, params = planner
  prompts = random_prompts(np.random.RandomState(7), [4, 9, 6])
  greedy = SamplingConfig(temperature=0.0, max_new_tokens=NUM_NEW)
  free = np.asarray(generate(config, params, prompts, jax.random.key(1), greedy, stop_token=None).tokens)
  stop = int(free[0, 5])
  out = generate(config, params, prompts, jax.random.key(1), greedy, stop_token=stop, return_logits=True)
  tokens, lengths, logits = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logits)
  for b in range(len(prompts)):
    hits = np.flatnonzero(free[b] == stop)
    expected_len = hits[0] + 1 if hits.size else NUM_NEW
    assert lengths[b] == expected_len
    np.testing.assert_array_equal(tokens[b, :expected_len], free[b, :expected_len])
    assert (tokens[b, expected_len:] == PAD_ID).all()
    assert (logits[b, expected_len:] == 0).all() and (logits[b, :expected_len] != 0).any(axis=-1).all()


def test_same_shapes_compile_once(planner):
  config, params = planner
  rng = np.random.RandomState(3)
  sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=8)
  generate(config, params, random_prompts(rng, [3, 6]), jax.random.key(0), sampling, stop_token=None, prompt_length=8)
  compiled = _sample_program._cache_size()
  for temperature, top_p, stop in [(1.2, 0.5, 61), (0.5, 0.95, None)]:
    changed = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=8)
    out = generate(config, params, random_prompts(rng, [8, 2]), jax.random.key(1), changed, stop_token=stop,
                   prompt_length=8)
    assert out.tokens.shape == (2, 8)
  assert _sample_program._cache_size() == compiled


def test_left_padding_layout():
  padded = pad_prompts([[5, 6, 7], [8]], vocab_size=10, pad_to=4)
  np.testing.assert_array_equal(padded.token_ids, [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(padded.segment_ids, [[0, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(padded.positions, [[0, 0, 1, 2], [0, 0, 0, 0]])
  np.testing.assert_array_equal(padded.lengths, [3, 1])


# --- plan grammar ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled_plans(planner):
  """200 plans: F in {2, 3}, temperatures 0.5..1.5, 4 seeds, batches of 25 prompts of varied length."""
  config, params = planner
  plans = []
  for num_frames in (2, 3):
    for seed, temperature in enumerate([0.5, 0.8, 1.1, 1.5]):
      prompts = random_prompts(np.random.RandomState(seed), np.random.RandomState(seed + 10).randint(3, 13, 25))
      out = sample_plans(config, params, PLAN_TOKENS, prompts, num_frames, jax.random.key(seed),
                         SamplingConfig(temperature=temperature), prompt_length=12)
      plans.append((num_frames, prompts, np.asarray(out.tokens), np.asarray(out.codes)))
  return plans


def test_sampled_plans_are_well_formed(sampled_plans):
  count = 0
  for num_frames, _, tokens, codes in sampled_plans:
    assert tokens.shape[1] == (num_frames - 1) * KEYFRAME_LEN + 1
    assert codes.shape == (tokens.shape[0], num_frames - 1, 81)
    for row, row_codes in zip(tokens, codes):
      assert validate_plan(row, PLAN_TOKENS, num_frames), PlanGrammar(PLAN_TOKENS, num_frames).first_violation(row)
      np.testing.assert_array_equal(build_plan(row_codes), row)
      count += 1
    assert len(np.unique(codes)) > 100, "codes should be sampled, not constant"
  assert count == 200


def test_plan_sampling_is_reproducible(planner, sampled_plans):
  config, params = planner
  num_frames, prompts, tokens, _ = sampled_plans[0]
  again = sample_plans(config, params, PLAN_TOKENS, prompts, num_frames, jax.random.key(0),
                       SamplingConfig(temperature=0.5), prompt_length=12)
  np.testing.assert_array_equal(np.asarray(again.tokens), tokens)


def test_continuation_keeps_prefix_and_completes_the_plan(planner, sampled_plans):
  config, params = planner
  num_frames, prompts, tokens, _ = sampled_plans[-1]
  prompts, tokens = prompts[:4], tokens[:4]
  shared = tokens[0, :90]  # mid second keyframe
  per_row = tokens[:, :90]
  for prefix in (shared, per_row):
    out = sample_plans(config, params, PLAN_TOKENS, prompts, num_frames, jax.random.key(5),
                       SamplingConfig(temperature=1.0), prefix=prefix, prompt_length=12 + 90)
    got = np.asarray(out.tokens)
    np.testing.assert_array_equal(got[:, :90], np.broadcast_to(prefix, (4, 90)))
    assert validate_plan(got, PLAN_TOKENS, num_frames)
    np.testing.assert_array_equal(np.asarray(out.codes), plan_to_codes(got, PLAN_TOKENS))


def test_grammar_template_and_validation():
  grammar = PlanGrammar(PLAN_TOKENS, 3)
  codes = np.random.RandomState(0).randint(0, 256, (2, 81))
  plan = build_plan(codes)
  np.testing.assert_array_equal(grammar.template() < 0, np.asarray(grammar.is_code_step(np.arange(grammar.length))))
  assert (grammar.template() < 0).sum() == 2 * 81 and grammar.length == len(plan) == 169
  assert validate_plan(plan, PLAN_TOKENS, 3)
  np.testing.assert_array_equal(plan_to_codes(plan, PLAN_TOKENS), codes)
  broken = plan.copy()
  broken[100] = 7  # a text token where a code belongs
  assert not validate_plan(broken, PLAN_TOKENS, 3)
  with pytest.raises(ValueError, match="step 100 holds text token id 7; the plan grammar expects a code"):
    validate_plan(broken, PLAN_TOKENS, 3, raise_error=True)
  assert not validate_plan(plan[:-1], PLAN_TOKENS, 3)
  assert not validate_plan(plan, PLAN_TOKENS, 2)
  swapped = plan.copy()
  swapped[1] = PLAN_TOKENS.scale_token(0)
  with pytest.raises(ValueError, match=r"holds <S0> .*expects <S2>"):
    validate_plan(swapped, PLAN_TOKENS, 3, raise_error=True)


# --- logits processing -------------------------------------------------------------------------------


def draw(logits, n, **kwargs):
  keys = jax.random.split(jax.random.key(11), n)
  return np.asarray(jax.jit(jax.vmap(lambda k: sample_token(k, logits, **kwargs)))(keys))  # [n, B]


@pytest.fixture(scope="module")
def logits():
  return jnp.asarray(np.random.RandomState(0).randn(4, 50).astype(np.float32) * 2)


def test_top_k_samples_only_the_k_best(logits):
  samples = draw(logits, 300, temperature=1.0, top_k=5)
  top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
  for b in range(4):
    assert set(samples[:, b]) <= set(top5[b]) and len(set(samples[:, b])) > 1


def test_top_p_keeps_the_nucleus(logits):
  probs = np.asarray(jax.nn.softmax(logits / 0.8, axis=-1))
  for top_p in (0.3, 0.7, 0.95):
    kept = np.isfinite(np.asarray(filter_logits(logits, 0.8, top_p=top_p)))
    for b in range(4):
      order = np.argsort(-probs[b])
      size = np.searchsorted(np.cumsum(probs[b, order]), top_p) + 1  # smallest set with mass >= top_p
      assert set(np.flatnonzero(kept[b])) == set(order[:size])
    samples = draw(logits, 200, temperature=0.8, top_p=top_p)
    assert all(kept[b, samples[:, b]].all() for b in range(4))


def test_top_k_one_and_tiny_top_p_are_greedy(logits):
  greedy = np.asarray(logits).argmax(-1)
  np.testing.assert_array_equal(draw(logits, 1, temperature=0.0)[0], greedy)
  assert (draw(logits, 50, temperature=1.5, top_k=1) == greedy).all()
  assert (draw(logits, 50, temperature=1.5, top_p=1e-6) == greedy).all()


def test_allowed_mask_and_range_are_respected(logits):
  mask = np.random.RandomState(1).rand(4, 50) < 0.2
  mask[:, 0] = True
  samples = draw(logits, 200, temperature=2.0, allowed=jnp.asarray(mask))
  assert all(mask[b, samples[:, b]].all() for b in range(4))
  greedy_masked = np.where(mask, np.asarray(logits), -np.inf).argmax(-1)
  np.testing.assert_array_equal(draw(logits, 1, temperature=0.0, allowed=jnp.asarray(mask))[0], greedy_masked)
  in_range = draw(logits, 200, temperature=2.0, top_p=0.9, allowed=(10, 20))
  assert ((in_range >= 10) & (in_range < 20)).all()


def test_temperature_sets_the_sampling_distribution():
  logits = jnp.asarray([[1.0, 0.5, 0.0, -1.0]])
  expected = np.asarray(jax.nn.softmax(logits[0] / 0.5))
  samples = draw(logits, 6000, temperature=0.5)[:, 0]
  freq = np.bincount(samples, minlength=4) / len(samples)
  np.testing.assert_allclose(freq, expected, atol=0.02)


def test_ties_at_the_boundary_are_all_kept():
  tied = jnp.asarray([[3.0, 1.0, 3.0, 0.0]])
  assert np.isfinite(np.asarray(filter_logits(tied, 1.0, top_k=1))).tolist() == [[True, False, True, False]]
  assert np.isfinite(np.asarray(filter_logits(tied, 1.0, top_p=0.05))).tolist() == [[True, False, True, False]]
  assert draw(tied, 1, temperature=0.0)[0, 0] == 0


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_sampling_config_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingConfig(**kwargs)


def test_prompt_errors(planner):
  config, params = planner
  vocab = config.vocab_size
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=f"prompt 1 holds token id {vocab} outside the vocabulary of size {vocab}"):
    generate(config, params, [[1, 2], [3, vocab]], key)
  with pytest.raises(ValueError, match="token id -1 outside the vocabulary"):
    generate(config, params, [[-1, 2]], key)
  short = config.replace(max_position_embeddings=64)
  with pytest.raises(ValueError, match="prompt of 60 tokens plus 8 new tokens exceeds the context of 64"):
    generate(short, params, [[1] * 60], key, SamplingConfig(max_new_tokens=8))
  with pytest.raises(ValueError, match="prompt of 60 tokens plus 85 new tokens exceeds the context of 64"):
    sample_plans(short, params, PLAN_TOKENS, [[1] * 60], 2, key)
  with pytest.raises(ValueError, match="stop token id"):
    generate(config, params, [[1, 2]], key, stop_token=vocab)
  with pytest.raises(ValueError, match="non-empty"):
    generate(config, params, [[]], key)


def test_plan_errors(planner, sampled_plans):
  config, params = planner
  key = jax.random.key(0)
  plan = sampled_plans[-1][2][0]
  with pytest.raises(ValueError, match="num_frames must be an int >= 2"):
    sample_plans(config, params, PLAN_TOKENS, [[1, 2]], 1, key)
  malformed = plan[:10].copy()
  malformed[5] = PLAN_TOKENS.im_end
  with pytest.raises(ValueError, match="prefix is not the start of a plan: step 5 holds <im_end>"):
    sample_plans(config, params, PLAN_TOKENS, [[1, 2]], 3, key, prefix=malformed)
  with pytest.raises(ValueError, match="leaves nothing to sample"):
    sample_plans(config, params, PLAN_TOKENS, [[1, 2]], 3, key, prefix=plan)
  with pytest.raises(ValueError, match="equal-length rows"):
    sample_plans(config, params, PLAN_TOKENS, [[1, 2], [3]], 3, key, prefix=[plan[:3], plan[:4]])
  with pytest.raises(ValueError, match="plan tokens need"):
    sample_plans(config.replace(vocab_size=100), params, PLAN_TOKENS, [[1, 2]], 3, key)


def test_t2v_first_frame_embeddings_are_zeroed_in_prefill(planner):
  """The first sampled code equals the argmax of a full forward with the same embeddings zeroed."""
  config, params = planner
  rng = np.random.RandomState(11)
  prompt = np.concatenate([rng.randint(0, 59, 6), PLAN_TOKENS.code_offset + rng.randint(0, 256, 9), [62]])
  mask = np.zeros(len(prompt), bool)
  mask[6:15] = True
  greedy = SamplingConfig(temperature=0.0)
  zeroed = sample_plans(config, params, PLAN_TOKENS, [prompt], 2, jax.random.key(0), greedy, zero_embed_masks=[mask])
  kept = sample_plans(config, params, PLAN_TOKENS, [prompt], 2, jax.random.key(0), greedy)
  head = np.concatenate([prompt, [PLAN_TOKENS.im_start, PLAN_TOKENS.scale_token(2)]])[None]
  full_mask = np.concatenate([mask, [False, False]])[None]
  for masks, out in ((full_mask, zeroed), (None, kept)):
    logits = Planner(config).apply({"params": params}, jnp.asarray(head), zero_embed_mask=masks)[0, -1]
    expected = int(np.argmax(np.asarray(logits)[PLAN_TOKENS.code_offset:]))
    assert int(out.codes[0, 0, 0]) == expected
  assert not np.array_equal(np.asarray(zeroed.codes), np.asarray(kept.codes))
  with pytest.raises(ValueError, match=r"zero_embed_masks\[0\] has shape \(3,\), prompt 0 has \(16,\)"):
    sample_plans(config, params, PLAN_TOKENS, [prompt], 2, jax.random.key(0), greedy, zero_embed_masks=[mask[:3]])


def test_unrolled_layers_decode_like_scanned_layers(planner):
  from planx_jax.models.layer_layout import unstack_layers

  config, params = planner
  unrolled_config = config.replace(scan_layers=False)
  unrolled = unstack_layers(params, config.num_layers)
  prompts = random_prompts(np.random.RandomState(7), [4, 9], config.vocab_size)
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
  a = generate(config, params, prompts, jax.random.key(0), sampling, stop_token=None, return_logits=True)
  b = generate(unrolled_config, unrolled, prompts, jax.random.key(0), sampling, stop_token=None, return_logits=True)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), atol=1e-5, rtol=0)


def test_bfloat16_batched_decoding_runs_and_tracks_fp32(planner):
  """bf16 compute through prefill + cached decode at batch 8 (a path XLA:CPU dots once rejected)."""
  config, params = planner
  prompts = random_prompts(np.random.RandomState(8), [6] * 8, config.vocab_size)
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=4)
  fp32 = generate(config, params, prompts, jax.random.key(0), sampling, stop_token=None, return_logits=True)
  bf16 = generate(config.replace(dtype="bfloat16"), params, prompts, jax.random.key(0), sampling, stop_token=None,
                  return_logits=True)
  assert bf16.logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16.logits[:, 0]), np.asarray(fp32.logits[:, 0]), atol=0.05, rtol=0)
