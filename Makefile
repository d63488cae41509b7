# The two commands of the README: `make run` and `make test`. Each creates .venv/ and
# installs the project (with its development tools) on first use, and is quick after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit proto bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "yunkai needs Python 3.11 or newer" or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/yunkai demo

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy proto serving node router clients scoring lending risk cluster loadtest

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. proto/*.proto

bench: $(STAMP)
	$(BIN)/yunkai bench-node --workload transfers --json bench-transfers.json
	$(BIN)/yunkai bench-node --workload lookups --json bench-lookups.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
