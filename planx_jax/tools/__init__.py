"""Benchmark and maintenance scripts (the repository's top-level `tools/`): `python -m planx_jax.tools.<name>`."""

from planx_jax._checkout import checkout_path

__path__ = checkout_path(__path__, "tools")
