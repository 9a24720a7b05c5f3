"""World episodes as Plan-X training records: clips rendered, encoded by the world's encoders (codes, latents, umT5
states) and written as a TFDS dataset. Not the encoders themselves (world.encoders)."""

from pathlib import Path

import numpy as np
import tqdm

from planx_jax.data.tfds_builder import build_dataset
from planx_jax.world import scenes
from planx_jax.world.encoders import Encoders, encode_clips


def episode_records(enc: Encoders, episodes: list[scenes.Episode], chunk: int = 64, progress: bool = True
                    ) -> list[dict]:
  """Plan-X training records of world episodes (every clip has its first frame: the demo is I2V)."""
  records = []
  for start in tqdm.trange(0, len(episodes), chunk, desc="encoding clips", disable=not progress, leave=False):
    part = episodes[start:start + chunk]
    coded = encode_clips(enc, np.stack([scenes.render(e) for e in part]))
    text = enc.text_emb([e.video_prompt for e in part])
    for i, e in enumerate(part):
      records.append({"image_description": e.image_description, "video_prompt": e.video_prompt,
                      "codes_s0": coded["codes_s0"][i], "has_first_frame": np.bool_(True),
                      "codes_s2": coded["codes_s2"][i], "latents": coded["latents"][i], "text_emb": text[i]})
  return records


def write_records(enc: Encoders, episodes: list[scenes.Episode], out_dir: Path, progress: bool = True) -> Path:
  records = episode_records(enc, episodes, progress=progress)
  return build_dataset(out_dir, shapes=enc.shapes, codebook_size=enc.tatok_config.codebook_size, records=records,
                       overwrite=True)
