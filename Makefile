# MyoVault — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# torch first, pinned: pip takes the local CPU wheel and never pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test lint typecheck unit clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/myovault demo --host 127.0.0.1 --port 5000

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check repository tests/repository

typecheck: install
	$(BIN)/mypy repository

test: lint typecheck
	$(PY) -m pytest

unit: install
	$(PY) -m pytest -m "not slow and not integration and not browser"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
