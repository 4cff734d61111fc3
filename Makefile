# mtobench: `make benchmark` runs the default suite, `make test` runs the tests. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUITE ?= configs/suites/default.yaml
export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
export PYTHONHASHSEED := 0

.PHONY: setup benchmark test test-all lint perf clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mtobench needs Python >= 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

benchmark: $(STAMP)
	$(BIN)/mtobench run $(SUITE)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

perf: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[compare]'
	$(BIN)/python -m benchmark.perf.step_time --out perf.md

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs data/synthetic_scenes .pytest_cache
