"""Small text helpers every layer shares: comma lists, an error's first line, JSON without NaN."""

from __future__ import annotations

import math
from typing import Any, Iterable, Union

__all__ = ["comma_list", "finite_or_none", "first_line"]


def comma_list(values: Union[str, Iterable], keep_empty: bool = False) -> list[str]:
    """Items of comma-separated or repeated values ("a,b", ["a", "b,c"]), stripped, in order; empty items are
    dropped unless `keep_empty` (for a caller that rejects "a,,b")."""
    items = [values] if isinstance(values, str) else values
    parts = [part.strip() for item in items for part in str(item).split(",")]
    return parts if keep_empty else [part for part in parts if part]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf) inside dicts and lists replaced by None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
