"""Evaluation of generated videos: the verifiable judge of the synthetic world (`planx eval`); no model code."""
