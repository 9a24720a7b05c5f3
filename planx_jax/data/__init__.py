"""Data for the planner: the Plan-X conversation format (Figure 6) and tokenizers; no model code."""
