# mtobench: `make benchmark` runs the default suite, `make test` runs the tests. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUITE ?= configs/suites/default.yaml
# Runs trained at once by `make benchmark`, sharing the CPU threads (two 1-thread runs beat one 2-thread run ~1.5x
# on 2 cores at the default suite's size: benchmark/perf/power_notes.md §5).
WORKERS ?= 2
# A wheel index for torch and torchvision, e.g. the CPU-only builds (no CUDA libraries, a far smaller .venv):
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty (the default): they come from the default index with the rest, in the versions pyproject.toml allows.
TORCH_INDEX ?=
TORCH_PINS = $(shell $(PYTHON) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(repr(x) for x in d if x.split(">")[0].split("=")[0] in ("torch", "torchvision")))')
export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
export PYTHONHASHSEED := 0

.PHONY: setup benchmark test test-all lint perf clean data-fashion

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mtobench needs Python >= 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

benchmark: $(STAMP)
	$(BIN)/mtobench run $(SUITE) --workers $(WORKERS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

perf: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[compare]'
	$(BIN)/python -m benchmark.perf.step_time --out perf.md
	$(BIN)/python -m benchmark.perf.overhead --out perf.md

lint: $(STAMP)
	$(BIN)/ruff check .

data-fashion:  # Fashion-MNIST for the multi_mnist datamodule (variants multi_fashion, multi_fashion_mnist)
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is installed in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; \
	else echo "Run as root: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or download the four files of https://github.com/zalandoresearch/fashion-mnist and set MTOBENCH_FASHION_MNIST to their folder"; exit 1; fi

clean:
	rm -rf runs data/synthetic_scenes .pytest_cache
