"""Typer command-line interface: one thin module per command."""

__all__: list[str] = []
