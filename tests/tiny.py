"""The one tiny digits configuration tests train and build with, as overrides and as `finc` arguments.

One flow step per level and width-8 couplings: a few optimizer steps take about a second on a CPU core.
A test that needs something different derives it from these: `{**TINY_OVERRIDES, "train.steps": 6}`,
`[*TINY_ARGS, "--seed", "5"]`.
"""

TINY_MODEL = {"model.steps": 1, "model.hidden": 8}
TINY_BATCH = 16
TINY_OVERRIDES = {**TINY_MODEL, "train.batch_size": TINY_BATCH}

# The run `trained_run` (tests/conftest.py) holds: three steps, a log record each, validation at steps 2 and 3.
TRAINED_RUN_OVERRIDES = {
    **TINY_OVERRIDES,
    "train.steps": 3,
    "train.lr": 0.002,
    "train.seed": 7,
    "train.log_every": 1,
    "train.eval_every": 2,
}


def as_sets(overrides: dict) -> list[str]:
    """`{"model.steps": 1}` as `finc` arguments: `["--set", "model.steps=1"]`."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


TINY_SETS = as_sets(TINY_MODEL)
TINY_ARGS = [*TINY_SETS, "--batch-size", str(TINY_BATCH), "--quiet"]
