"""Flax Linen modules and their configs (planner, layers, RoPE) plus param-layout helpers; no I/O."""
