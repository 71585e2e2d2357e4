# Every target creates or reuses the project virtualenv, so each works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.finc-installed

.PHONY: install test test-fast lint demo bench kernels gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The everyday tier (about 2.5 minutes on 2 cores): everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Lint and the format check (ruff, configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The main job on the embedded default: train on digits, sample a grid, report test bits/dim,
# then draw the run as one picture (runs/digits/report.png; docs/report.png is a copy of one).
demo: $(STAMP)
	$(BIN)/finc train --preset digits --out runs/digits --force
	$(BIN)/finc sample runs/digits/best.pt -n 64 --out runs/digits/samples.png --seed 0
	$(BIN)/finc bpd runs/digits/best.pt --split test --samples 64
	$(BIN)/finc report runs/digits --out runs/digits/report.png

# CPU benchmarks; regenerates the tables in BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python -m finc_cli.bench.report --update BENCHMARKS.md

# Compile every CUDA kernel with NVRTC (no GPU needed) and print registers and spills.
kernels: $(STAMP)
	$(BIN)/python -m finc_cli.inverse.kernel_report

# On a GPU machine, from the source tree, with its own preinstalled torch and cupy: no install.
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m finc_cli.bench.gpu_check $${OUT:+--out $$OUT/gpu_check.json}

clean:
	rm -rf $(VENV) runs .pytest_cache
