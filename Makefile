# MedLens: `make demo` and `make test` on a fresh machine with Python 3.11 and pip.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medlens-installed
# Every distribution of the repo, installed editable (plain path .pth files).
DISTS := validation workflows $(wildcard plugins/*)
PYPROJECTS := pyproject.toml $(wildcard validation/pyproject.toml workflows/pyproject.toml plugins/*/pyproject.toml)

.PHONY: demo test lint typecheck unit install sysdeps clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel

$(STAMP): $(PYPROJECTS) | $(PY)
	$(PY) -m pip install -q -e ".[dev]" $(foreach d,$(DISTS),-e $(d)) \
	    --config-settings editable_mode=compat
	touch $@

sysdeps:
	@scripts/install-system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache  # layer contracts in pyproject.toml [tool.importlinter]

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Two workers: many tests wait on services, processes and sockets, so two cores overlap.
unit: $(STAMP) sysdeps
	$(PY) -m pytest -q -p no:cacheprovider -n 2

test: lint typecheck unit

demo: $(STAMP)
	$(VENV)/bin/medlens demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
