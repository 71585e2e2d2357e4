"""Training: the loop, one optimizer step, the state a checkpoint carries, and the run directory."""

from finc_cli.train.loop import MAX_ROLLBACKS, Reporter, Trainer, TrainingInterrupted, train

__all__ = ["MAX_ROLLBACKS", "Reporter", "Trainer", "TrainingInterrupted", "train"]
