"""Training: the loop, evaluation, optimizers and schedule, checkpoints, resume, the run's lock and output."""
