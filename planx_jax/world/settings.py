"""The world's sizes and default settings: the tiny models' shapes that read it (planner, DiT, TA-Tok codes, umT5
states, pixel codec latents) and its seeds and encoder fits. Library values that configs/ read, not a config file.

Sizes: 64x64 frames, 17 frames at 8 fps (5 keyframes at 2 FPS), pixel codec latents [5, 16, 16, 16] (4x4 pixels x 4
frames per block, its 16 leading principal components, later frames as changes from the first), umT5 states
[40, 32], 128 TA-Tok codes.
"""

import ml_collections

CODEBOOK_SIZE = 128
NUM_KEYFRAMES = 5  # frames 0, 4, 8, 12, 16 of the 17-frame, 8 fps clips
LATENT_SHAPE = (5, 16, 16, 16)  # pixel codec: 4x4 px x 4 frames per block -> 16 principal components
TEXT_SHAPE = (40, 32)  # tiny umT5: 40 tokens of width 32
SEQ_LEN = 1280  # the longest demo conversation is 1251 tokens (729 first-frame codes + 4 x 84 plan tokens + text)
# TA-Tok codes are as wide as the planner (as Tar's codebook is for the 1.5B LLM), so the stage-1 semantic branch
# (codebook vectors in) carries over to end-to-end training (planner hidden states in) unchanged.
CODE_DIM = 64
# The sampler's timestep shift (UniPC, 20 steps); the DiT stages draw their training noise levels logit-normal with
# the same shift, so training covers the high noise levels where sampling spends its first steps (with shift 1
# almost no training example has s > 0.9, and the demo's DiTs left blocky noise over every generated frame).
SHIFT = 3.0
# Sized for a 2-core CPU (about 25 GFLOP/s): a planner example (1251 tokens) costs ~3 GFLOP to train, a DiT
# example (320 video tokens) ~0.5 GFLOP. A DiT token carries 2x2 latent cells x 16 channels = 64 values, no more than
# the DiT width (with the lossless 192-channel codec a token's 768 values could not pass a width-64 model).
PLANNER = {"vocab_size": 536, "hidden_size": CODE_DIM, "intermediate_size": 192, "num_layers": 2, "num_heads": 2,
           "num_kv_heads": 1, "head_dim": 32, "max_position_embeddings": 2048}
DIT = {"in_channels": 16, "out_channels": 16, "text_dim": 32, "num_heads": 4, "head_dim": 16, "ffn_dim": 128,
       "num_layers": 3, "freq_dim": 64, "rope_max_seq_len": 64}


def world_config() -> ml_collections.ConfigDict:
  """The world and its encoders (what `world.encoders.build_encoders` and the RL environment read): seed, the
  episode counts, TA-Tok, the umT5 text length and the pixel codec."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.world = ml_collections.ConfigDict({"seed": 0, "num_train": 512, "num_heldout": 24})
  # TA-Tok: the tiny SigLIP tower with random weights (position table zeroed, codes depend on content), layer 1
  # features, and a codebook fit by spherical k-means on the training frames.
  c.tatok = ml_collections.ConfigDict({"codebook_size": CODEBOOK_SIZE, "code_dim": CODE_DIM, "select_layer": 1,
                                       "kmeans_iters": 15, "kmeans_frames": 96})
  c.text_len = TEXT_SHAPE[0]
  # Latent frames after the first hold their change from it (zero where the scene is static): a DiT trained for
  # minutes on CPU learns motion, not copying the first frame forward.
  c.codec = ml_collections.ConfigDict({"spatial": 4, "temporal": 4, "channels": 16, "delta": True})
  return c
