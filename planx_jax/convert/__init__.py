"""Checkpoint conversion tables between reference formats (transformers, safetensors) and planx params."""
