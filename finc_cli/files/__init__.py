"""File helpers every layer may use: atomic writes, the run directory's lock, and image files."""

__all__: list[str] = []
