# Two commands from a fresh clone: `make quickstart` and `make test`.
# The venv is refreshed only when pyproject.toml changes (stamp file).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
# torch/torchvision pinned to the builds these machines carry on disk; on a GPU cluster install
# the CUDA build you need first (see docs/install.md) and set TORCH_SPEC= to keep it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install -q $(TORCH_SPEC); fi
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/mdeq quickstart

# tests/run_suite.sh: the real-Slurm tests (mostly waiting on Slurm's timers) run as a second pytest
# session beside the rest; PYTEST_ARGS runs one plain session with those arguments instead.
test: $(STAMP)
	tests/run_suite.sh $(BIN)/python $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mdeq data_pipelines trainer launch tests

clean:
	rm -rf $(VENV) runs .pytest_cache
