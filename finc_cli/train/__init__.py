"""Training: the loop, one optimizer step, the state a checkpoint carries, and the run directory."""

from finc_cli.train.loop import Reporter, Trainer, train
from finc_cli.train.signals import TrainingInterrupted
from finc_cli.train.state import MAX_ROLLBACKS

__all__ = ["MAX_ROLLBACKS", "Reporter", "Trainer", "TrainingInterrupted", "train"]
