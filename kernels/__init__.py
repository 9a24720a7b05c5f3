"""Pallas kernels, their XLA references and the dispatch that picks one; installed as planx_jax.kernels."""
