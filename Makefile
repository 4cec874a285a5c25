# The two commands a user needs are `make run` and `make test`; both install first when the
# virtual environment is missing or older than the lock file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-stamp
export UV_COMPILE_BYTECODE := 1

.PHONY: install lock run test lint format proto docs bench bench-peers bench-deps clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $(STAMP)

# Regenerate the lock after changing pyproject.toml dependencies.
lock:
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

proto: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I proto \
		--python_out=. --pyi_out=. --grpc_python_out=. --mypy_grpc_out=. \
		proto/mlops_core/protocol/open_inference.proto

run: $(STAMP)
	$(PY) -m launcher

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# mypy checks what pyproject.toml's [tool.mypy] names: the services and mlops_core.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# docs/configuration.md is generated from mlops_core/settings.py (tests/deploy/test_docs.py
# fails when it is out of date).
docs: $(STAMP)
	$(PY) scripts/config_reference.py --write

bench: $(STAMP)
	$(PY) -m benchmarks run $(BENCH_ARGS)

bench-peers: $(STAMP)
	$(PY) -m benchmarks peers $(BENCH_ARGS)

# The one target that installs system packages, and only when asked: the benchmarks' native load
# clients, h2load and wrk (apt-get, through sudo when not root). `make bench` names it when they
# are missing.
bench-deps: $(STAMP)
	$(PY) -m benchmarks deps

clean:
	rm -rf $(VENV) .mlops-data
