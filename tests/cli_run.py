"""Run the `finc` CLI in-process from tests: invoke(...) and ok(result)."""

from typer.testing import CliRunner

from finc_cli.cli.main import app


def invoke(*args):
    """`finc ARGS...` in-process (each argument str()-ed); the CliRunner result."""
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result):
    """The result, after asserting exit code 0 (the output and exception in the message otherwise)."""
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result
