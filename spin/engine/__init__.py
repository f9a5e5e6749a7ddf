"""Training engine: checkpoints, optimisation, the train/eval loops and distributed helpers."""
