"""Benchmark and maintenance scripts; installed as planx_jax.tools."""
