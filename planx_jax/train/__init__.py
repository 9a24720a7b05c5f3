"""Training: train state, the three Plan-X stages as tasks, the jitted step, the experiment, loop and checkpoints."""
