"""Pallas kernels, their XLA references and the dispatch that picks one (the repository's top-level `kernels/`)."""

from planx_jax._checkout import checkout_path

__path__ = checkout_path(__path__, "kernels")
