"""Subcommands of the `planx` command line (`planx_jax.cli`): each has `add_parser` and `run`."""
