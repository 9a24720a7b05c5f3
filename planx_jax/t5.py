"""Public entry points of the umT5 text encoder: model, presets, params, prompt encoding, conversion, checkpoints.

Gathers what lives in `models/t5*.py` and `convert/umt5.py` under the names users import
(`planx_jax.t5.load_hf`, `planx_jax.t5.encode`, ...), plus Wan's prompt cleaning and tokenization.
"""

import html
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from planx_jax.convert.umt5 import load_hf, save_hf
from planx_jax.data.tokenizer import load_tokenizer
from planx_jax.model_spec import ModelSpec
from planx_jax.models.t5 import T5Encoder, encode, relative_position_buckets
from planx_jax.models.t5_config import T5Config

__all__ = [
    "SPEC", "T5Config", "T5Encoder", "abstract_params", "clean_prompt", "encode", "encode_prompts", "init_params",
    "load_checkpoint", "load_hf", "load_tokenizer", "param_count", "param_logical_axes", "relative_position_buckets",
    "save_checkpoint", "save_hf", "tokenize_prompts",
]


def _boxed_init(config: T5Config):
  """Random params with T5's Mesh-TensorFlow scales (unit-normal embedding, unit norms)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return lambda rng: T5Encoder(config).init(rng, ids, jnp.ones_like(ids))


SPEC = ModelSpec(kind="t5", config_cls=T5Config, boxed_init=_boxed_init, layer_stack="layers",
                 runtime_fields=frozenset({"dtype", "param_dtype", "scan_layers", "text_len"}))
init_params, abstract_params = SPEC.init_params, SPEC.abstract_params
param_count, param_logical_axes = SPEC.param_count, SPEC.param_logical_axes
save_checkpoint, load_checkpoint = SPEC.save_checkpoint, SPEC.load_checkpoint


def clean_prompt(text: str) -> str:
  """WanPipeline's prompt cleaning without ftfy: HTML entities unescaped twice, whitespace runs made one space,
  ends stripped. (diffusers also runs `ftfy.fix_text` when ftfy is installed; planx does not, so fix
  mojibake before calling.)"""
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


def tokenize_prompts(config: T5Config, tokenizer, prompts: str | Sequence[str], *,
                     clean: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> (token_ids, mask), both int32 [B, text_len], as WanPipeline tokenizes.

  Special tokens added (umT5: a closing `</s>`), truncated to `text_len` tokens,
  right-padded with the tokenizer's pad token to `text_len`; mask 1 on tokens.
  `tokenizer` is a transformers tokenizer (`load_tokenizer`); a bare
  `tokenizers.Tokenizer` can be wrapped in `transformers.PreTrainedTokenizerFast`.
  """
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise ValueError("prompts is empty; pass at least one prompt")
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str):
      raise ValueError(f"prompts[{i}] is a {type(prompt).__name__}, expected str")
  if not callable(tokenizer) or not hasattr(tokenizer, "pad_token_id"):
    raise ValueError(f"tokenizer is a {type(tokenizer).__name__}; expected a transformers tokenizer (load_tokenizer, "
                     "or transformers.PreTrainedTokenizerFast(tokenizer_object=...))")
  if tokenizer.pad_token_id is None:
    raise ValueError("tokenizer has no pad token; Wan pads prompts to text_len with it (umT5: '<pad>', id 0)")
  if clean:
    prompts = [clean_prompt(p) for p in prompts]
  batch = tokenizer(prompts, padding="max_length", max_length=config.text_len, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="np")
  return np.asarray(batch["input_ids"], np.int32), np.asarray(batch["attention_mask"], np.int32)


def encode_prompts(config: T5Config, params: dict, tokenizer, prompts: str | Sequence[str], *,
                   clean: bool = True) -> tuple[jax.Array, jax.Array]:
  """Text -> Wan text embeddings: ([B, text_len, d_model] with zero rows past each prompt, mask [B, text_len] int32).

  `tokenize_prompts` then `encode`. Negative prompts for classifier-free guidance
  go through the same call.
  """
  token_ids, mask = tokenize_prompts(config, tokenizer, prompts, clean=clean)
  return encode(config, params, token_ids, mask), jnp.asarray(mask)
