"""DatasetError: the one exception type of the data package, meant for users."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset is unknown, missing or malformed; the message is one line meant for users."""
