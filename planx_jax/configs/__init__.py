"""ml_collections experiment files (the repository's top-level `configs/`), loaded by path, never imported."""

from planx_jax._checkout import checkout_path

__path__ = checkout_path(__path__, "configs")
