"""ml_collections experiment files; installed as planx_jax.configs."""
