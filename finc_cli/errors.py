"""FincError: the base of every error meant for users (the CLI prints one line and exits with its code)."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DownloadError",
    "FincError",
    "ImageInputError",
    "InputError",
    "InverseBackendError",
    "LockError",
    "OutOfMemory",
    "OutputError",
    "RebuildDrift",
    "RunDirError",
    "TrainingDiverged",
]


class FincError(Exception):
    """A problem the user can fix; the message is one line naming the problem and the fix.

    `exit_code` is what the CLI exits with: 2 for bad input (nothing was written), 1 for a run
    that failed on its own (see TrainingDiverged). Anything that is not a FincError (nor an
    OSError) reaching the CLI is a bug in finc and is reported as an internal error.
    """

    exit_code = 2


class InputError(FincError, ValueError):
    """A bad option or argument value (a count, a temperature, a device, a shape)."""


class ConfigError(FincError, ValueError):
    """A preset, override or architecture that cannot be used."""


class DatasetError(FincError, ValueError):
    """A dataset that is unknown, missing or malformed on disk."""


class DownloadError(FincError, RuntimeError):
    """A download that failed on the way (network, checksum); nothing half-written is left (exit 1)."""

    exit_code = 1


class CheckpointError(FincError, ValueError):
    """A checkpoint that cannot be read or does not fit its model."""


class ImageInputError(FincError, ValueError):
    """An input image or latents file that cannot be used with this model."""


class OutputError(FincError, ValueError):
    """An output path that cannot be written."""


class RunDirError(FincError, ValueError):
    """A run directory that cannot be used as asked (occupied, or nothing to resume)."""


class LockError(FincError, RuntimeError):
    """A folder that another finc process is writing (a run directory, a prepared data cache)."""


class InverseBackendError(FincError, RuntimeError):
    """An inverse backend that cannot run here; the message says why and what to use instead."""


class OutOfMemory(FincError, RuntimeError):
    """A step that did not fit in this machine's memory (exit 1); the message names the smaller setting to try."""

    exit_code = 1


class TrainingDiverged(FincError, RuntimeError):
    """Rollbacks did not help: the run keeps producing non-finite steps (exit 1, checkpoints intact)."""

    exit_code = 1


class RebuildDrift(FincError, RuntimeError):
    """`train.memory: invert` rebuilt activations that drifted past the threshold (exit 1, checkpoints intact)."""

    exit_code = 1
