# The single entry point for developers and CI. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO := protos/generation_service/v1/generation.proto

.PHONY: help install system-deps protos protos-check lint format typecheck test check demo demo-cluster bench clean

help:
	@echo "install     create $(VENV) and install the project with its dev tools"
	@echo "protos      regenerate generation_service/v1 from $(PROTO)"
	@echo "lint        ruff check + format check, and the generated-code drift check"
	@echo "typecheck   mypy --strict"
	@echo "test        the whole test suite"
	@echo "check       lint, typecheck and test"
	@echo "demo        image, audio and video runs through simulator, service and gateway"
	@echo "demo-cluster  Redis, three replicas, two backends: a run survives its owner being killed"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed once per change of pyproject.toml: every target below works from a fresh clone.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

system-deps:
	scripts/system-deps.sh

protos: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=async_only:. $(PROTO)

# Regenerates into a scratch copy and fails when the checked-in code differs.
protos-check: install
	@tmp=$$(mktemp -d) && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=async_only:$$tmp $(PROTO) && \
	for f in $$(cd $$tmp && find . -name '*.py*'); do \
		cmp -s $$tmp/$$f $$f || { echo "generated code is stale: $$f (run 'make protos')"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is up to date"

lint: install protos-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Our code strictly; tests (a folder of modules, not a package) with untyped test functions allowed.
typecheck: install
	$(BIN)/mypy generation_service generation_client media_gateway comfy_simulator genctl benchmarks comfy_generation scripts
	$(BIN)/mypy tests --allow-untyped-defs --allow-incomplete-defs --check-untyped-defs \
		--disable-error-code type-arg --disable-error-code no-any-return

test: install system-deps
	$(BIN)/pytest -q

check: lint typecheck test

demo: install
	$(BIN)/python scripts/demo.py

demo-cluster: install system-deps
	$(BIN)/python scripts/demo_cluster.py

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
