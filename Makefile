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

.PHONY: install demo ablations test lint clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
