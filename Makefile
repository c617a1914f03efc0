# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and
# install the pinned dependencies first (torch==2.13.0 before anything that depends on it,
# so pip never pulls a CUDA build on a CPU machine).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Jobs call `python -m grape`: put the venv first on PATH for them.
export PATH := $(abspath $(BIN)):$(PATH)

# cell-eval (Arc Institute) in a venv of its own: the test of the predictions in its format runs
# `cell-eval run` when it installs, and skips with the reason when it does not.
CELL_EVAL_VENV := .venv-cell-eval
CELL_EVAL := $(CELL_EVAL_VENV)/bin/cell-eval

.PHONY: install demo ablations test test-fast lint clean cell-eval

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@cat results/demo/report/summary.md

# The demo plus the six ablations of the model, scored side by side (several minutes more).
ablations: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml workflow/configs/demo_ablations.yaml
	@cat results/demo/report/summary.md

cell-eval: $(CELL_EVAL)

$(CELL_EVAL):
	-$(PYTHON) -m venv $(CELL_EVAL_VENV) && $(CELL_EVAL_VENV)/bin/python -m pip install --quiet cell-eval==0.8.2

# Every test. The tiny demo runs once and is shared by the workflow tests (tests/conftest.py).
test: $(STAMP) cell-eval
	GRAPE_CELL_EVAL=$(if $(wildcard $(CELL_EVAL)),$(abspath $(CELL_EVAL))) $(BIN)/python -m pytest -q --durations=15

# The unit tests and the Snakemake dry runs, without the tests marked slow (pipeline runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
