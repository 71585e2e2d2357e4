"""The plain functions behind the CLI's commands: each takes keyword arguments, returns a dict and prints nothing."""

__all__: list[str] = []
