# Two commands on a fresh machine:
#   make dev    create .venv and install kbundle with the development tools and tensorflow-cpu
#   make test   (installs first if needed) run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kbundle-installed

.PHONY: dev test test-fast lint typecheck demo bench docs clean

dev: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,tensorflow-cpu,signing,lock]"
	# tf-keras (Keras 2) writes the legacy .h5 files the tests read. It declares a dependency
	# on plain "tensorflow", which would install the CUDA build over tensorflow-cpu, so it is
	# installed without dependencies: everything it needs is already here.
	$(BIN)/python -m pip install --quiet --no-deps "tf-keras>=2.16"
	# keras-hub: the tests pack its backbones (built at tiny sizes, never downloaded). Its
	# tensorflow-text pulls plain "tensorflow" beside tensorflow-cpu (two TensorFlows sharing
	# one package directory), so it too is installed without dependencies, with the one it
	# imports at start (tokenizers; kagglehub and tensorflow-text are imported only when used).
	$(BIN)/python -m pip install --quiet --no-deps "keras-hub==0.32.0" "tokenizers==0.23.3"
	# Azurite, Microsoft's Azure Storage emulator, for the Azure tests (a Node program, from the
	# npm registry, kept inside the virtual environment's directory).
	npm install --prefix $(VENV)/azurite --no-audit --no-fund --silent "azurite@3.37.0"
	touch $(STAMP)

# Three workers on a 2-CPU machine (the tests wait on child processes and servers a third of the
# time: 21.7 CPU-minutes ran in 12.7 minutes); a test file stays on one worker, so its module
# fixtures are built once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile -m "not slow and not venv"

lint: $(STAMP)
	$(BIN)/ruff check kbundle tests benchmarks examples
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python examples/demo.py

docs: $(STAMP)
	$(BIN)/python tools/cli_reference.py
	$(BIN)/python tools/api_reference.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
