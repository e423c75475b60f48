# MyoVault — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# torch first, pinned: pip takes the local CPU wheel and never pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test lint typecheck unit clean

# Browser-side viewer (NiiVue) from the npm registry, pinned by package-lock.json; the ES module
# bundle is copied where Flask serves it. Re-runs only when the lock file changes.
NIIVUE_DIR := repository/web/static/vendor/niivue

install: $(VENV)/.installed $(NIIVUE_DIR)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

$(NIIVUE_DIR)/.installed: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make: npm not found. The viewer needs NiiVue from the npm registry: install Node.js >= 18 with npm (Debian: apt-get install nodejs npm) and run make again." >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(NIIVUE_DIR)
	mkdir -p $(NIIVUE_DIR)
	cp node_modules/@niivue/niivue/dist/index.js $(NIIVUE_DIR)/niivue.js
	cp node_modules/@niivue/niivue/package.json $(NIIVUE_DIR)/package.json
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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output node_modules $(NIIVUE_DIR)
