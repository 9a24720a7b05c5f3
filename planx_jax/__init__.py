"""planx_jax: Plan-X in JAX.

A semantic planner LM (Qwen2.5 decoder over text-aligned keyframe tokens) and a
video DiT with a semantic branch, with conversion to and from PyTorch formats.
Component entry points live in submodules (`planx_jax.planner`, ...).
"""

__version__ = "0.1.0"
