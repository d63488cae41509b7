# The two commands of the README: `make run` and `make test`. Each creates .venv/ and
# installs the project (with its development tools) on first use, and is quick after;
# `make test` also installs the servers its tests start (etcd, PostgreSQL).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services lint typecheck unit proto bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "yunkai needs Python 3.11 or newer" or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/yunkai demo

test: $(STAMP) services lint typecheck
	$(BIN)/python -m pytest -q

# The servers some tests start throwaway copies of: etcd (the control plane) and PostgreSQL
# (the benchmark's peer); promtool, which checks the alert rules; Chromium, the browser the
# console's test drives; Redis, where gateway processes sharing a port count quotas. Debian
# packages, installed once (the scripts are quick after).
services:
	bash cluster/install-etcd.sh
	bash cluster/install-postgres.sh
	bash cluster/install-prometheus.sh
	bash cluster/install-chromium.sh
	bash cluster/install-redis.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy proto serving node router clients scoring lending risk gateway cluster loadtest

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. proto/*.proto

bench: $(STAMP)
	$(BIN)/yunkai bench-node --workload transfers --json bench-transfers.json
	$(BIN)/yunkai bench-node --workload lookups --json bench-lookups.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
