"""The demo world's frozen encoders: a tiny TA-Tok (random SigLIP tower, k-means codebook), a tiny random umT5 and
the pixel codec, built from the world's training frames, and clips encoded through them (codes and latents).

Not the records (world.records) and not generation. The encoders are the library's real TA-Tok / umT5 code paths at
tiny size; only their weights are the world's choices (documented on `build_tatok`).
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax import t5, tatok
from planx_jax.data import pixel_codec
from planx_jax.data.keyframes import keyframe_indices
from planx_jax.data.records import RecordShapes
from planx_jax.data.tokenizer import build_tiny_tokenizer
from planx_jax.models import tatok as tatok_model
from planx_jax.models.t5_config import T5Config
from planx_jax.models.tatok_config import TATokConfig
from planx_jax.world import scenes
from planx_jax.world.code_colors import code_colors

log = logging.getLogger("planx.demo")


@dataclasses.dataclass(frozen=True)
class Encoders:
  """What turns a world episode into a record (and a plan back into DiT inputs)."""

  tatok_config: TATokConfig
  tatok_params: dict
  t5_config: T5Config
  t5_params: dict
  tokenizer: object  # the tiny byte-level BPE tokenizer (umT5 and planner share it)
  codec: pixel_codec.PixelCodec
  shapes: RecordShapes
  code_rgb: np.ndarray  # [codebook_size, 3] uint8: mean colour of the cells each code encodes (plan pictures)

  @property
  def keyframes(self) -> np.ndarray:
    return keyframe_indices(scenes.NUM_FRAMES, scenes.FPS)  # [K]: 0, 4, 8, 12, 16

  def text_emb(self, prompts: list[str]) -> np.ndarray:
    """umT5 states [B, text_len, 32] of the video prompts (zero rows past each prompt)."""
    emb, _ = t5.encode_prompts(self.t5_config, self.t5_params, self.tokenizer, prompts)
    return np.asarray(emb, np.float32)


def spherical_kmeans(features: np.ndarray, k: int, iters: int, seed: int, sample: int = 20000) -> np.ndarray:
  """Vectors [N, D] -> k unit centroids [k, D] of cosine k-means: k-means++ seeding on `sample` of the (unit)
  vectors, then `iters` rounds of assignment / mean over all of them. A centroid left without members moves to
  the vector its nearest centroid serves worst."""
  x = jnp.asarray(features / np.linalg.norm(features, axis=-1, keepdims=True), jnp.float32)  # [N, D]
  rng = np.random.default_rng(seed)
  n = x.shape[0]
  if n < k:
    raise ValueError(f"k-means needs at least k={k} feature vectors, got {n}")
  pool = np.asarray(x[np.sort(rng.choice(n, size=min(n, sample), replace=False))])  # [S, D]
  chosen = [int(rng.integers(len(pool)))]
  best = np.full((len(pool),), np.inf)
  for _ in range(k - 1):  # k-means++ on 1 - cos
    best = np.minimum(best, np.maximum(1.0 - pool @ pool[chosen[-1]], 0.0))
    total = best.sum()
    chosen.append(int(rng.choice(len(pool), p=best / total)) if total > 0 else int(rng.integers(len(pool))))
  centroids = jnp.asarray(pool[chosen])  # [k, D]

  @jax.jit
  def update(c):
    sim = x @ c.T  # [N, k]
    assign = jnp.argmax(sim, axis=1)
    sums = jax.ops.segment_sum(x, assign, num_segments=k)  # [k, D]
    counts = jax.ops.segment_sum(jnp.ones((n,)), assign, num_segments=k)
    worst = jnp.argmin(jnp.max(sim, axis=1))
    new = jnp.where(counts[:, None] > 0, sums, x[worst][None, :])
    return new / jnp.linalg.norm(new, axis=-1, keepdims=True)

  for _ in range(iters):
    centroids = update(centroids)
  return np.asarray(centroids)


def build_tatok(codebook_size: int, code_dim: int, select_layer: int, frames: np.ndarray, iters: int, seed: int
                ) -> tuple[TATokConfig, dict]:
  """The demo TA-Tok from training frames [N, H, W, 3] uint8.

  Weights: the tiny SigLIP tower and TA-Tok linears are random (seed) - training a text-aligned tokenizer is
  out of the CPU budget - with the position table zeroed so a code describes a patch's content, not where it
  sits (the planner places codes; the DiT's 3D RoPE carries positions). Layer `select_layer`'s features, pooled
  per scale, are clustered by spherical k-means over scales 0 and 2; the centroids become the codebook (an
  identity `embedding_proj`), so codes are the nearest cluster by cosine, as TA-Tok looks them up.
  """
  config = TATokConfig.tiny(code_dim=code_dim, codebook_size=codebook_size, select_layer=select_layer,
                            codebook_impl="xla")
  params = jax.tree.map(np.asarray, tatok.init_params(config, jax.random.key(seed)))
  params["encoder"]["position_embedding"] = np.zeros_like(params["encoder"]["position_embedding"])
  images = jnp.asarray(frames, jnp.float32) / 255.0
  feats = []
  for scale in (0, 2):
    z = jax.jit(lambda p, x, s=scale: tatok_model.bottleneck_inputs(config, p, x, s))(params, images)  # [N, n, D]
    feats.append(np.asarray(z).reshape(-1, z.shape[-1]))
  centroids = spherical_kmeans(np.concatenate(feats), codebook_size, iters, seed)
  d = config.code_dim
  params["bottleneck"]["embedding"] = centroids.astype(np.float32)
  params["bottleneck"]["embedding_proj"] = {"kernel": np.eye(d, dtype=np.float32), "bias": np.zeros((d,), np.float32)}
  return config, params


def build_encoders(settings, train_episodes: list[scenes.Episode]) -> Encoders:
  """TA-Tok fit on `settings.tatok.kmeans_frames` training frames, umT5 and the codec (normalised on the same
  frames); `settings` is a world config (`world.settings.world_config()`, or the demo's config that extends it)."""
  rng = np.random.default_rng(settings.seed)
  picks = rng.choice(len(train_episodes), size=min(len(train_episodes), int(settings.tatok.kmeans_frames)),
                     replace=False)
  clips = np.stack([scenes.render(train_episodes[int(i)]) for i in picks])  # [N, T, H, W, 3]
  frames = clips[np.arange(len(clips)), rng.integers(0, scenes.NUM_FRAMES, len(clips))]  # one frame per clip
  log.info("TA-Tok: k-means of %d codes on %d training frames", settings.tatok.codebook_size, len(frames))
  tatok_config, tatok_params = build_tatok(int(settings.tatok.codebook_size), int(settings.tatok.code_dim),
                                           int(settings.tatok.select_layer), frames,
                                           int(settings.tatok.kmeans_iters), int(settings.seed))
  tokenizer = build_tiny_tokenizer()
  t5_config = T5Config.tiny(vocab_size=len(tokenizer), text_len=int(settings.text_len))
  t5_params = jax.tree.map(np.asarray, t5.init_params(t5_config, jax.random.key(settings.seed + 1)))
  codec = pixel_codec.PixelCodec(spatial=int(settings.codec.spatial), temporal=int(settings.codec.temporal),
                                 delta=bool(settings.codec.delta))
  codec = pixel_codec.fit(codec, clips.astype(np.float32) / 127.5 - 1.0, channels=int(settings.codec.channels))
  codebook = tatok.codebook_vectors(tatok_config, tatok_params)
  cell_codes = tatok.encode(tatok_config, tatok_params, jnp.asarray(frames, jnp.float32) / 255.0, 2, codebook=codebook)
  code_rgb = code_colors(frames, np.asarray(cell_codes), tatok_config.codebook_size)
  shapes = RecordShapes(num_keyframes=len(keyframe_indices(scenes.NUM_FRAMES, scenes.FPS)),
                        latent_shape=codec.latent_shape(scenes.NUM_FRAMES, scenes.FRAME_SIZE, scenes.FRAME_SIZE),
                        text_shape=(t5_config.text_len, t5_config.d_model))
  return Encoders(tatok_config, tatok_params, t5_config, t5_params, tokenizer, codec, shapes, code_rgb)


def encode_clips(enc: Encoders, clips: np.ndarray) -> dict[str, np.ndarray]:
  """Clips [B, T, H, W, 3] uint8 -> codes_s0 [B, 729], codes_s2 [B, K, 81], latents [B, F, h, w, C]."""
  images = jnp.asarray(clips, jnp.float32) / 255.0
  b = clips.shape[0]
  codebook = tatok.codebook_vectors(enc.tatok_config, enc.tatok_params)
  codes_s0 = tatok.encode(enc.tatok_config, enc.tatok_params, images[:, 0], 0, codebook=codebook)  # [B, 729]
  keyframes = images[:, enc.keyframes].reshape(-1, *images.shape[2:])  # [B * K, H, W, 3]
  codes_s2 = tatok.encode(enc.tatok_config, enc.tatok_params, keyframes, 2, codebook=codebook)  # [B * K, 81]
  latents = pixel_codec.encode(enc.codec, images * 2.0 - 1.0)
  return {"codes_s0": np.asarray(codes_s0, np.int32), "codes_s2": np.asarray(codes_s2, np.int32).reshape(b, -1, 81),
          "latents": np.asarray(latents, np.float32)}
