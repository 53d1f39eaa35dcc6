# One command per habit; CI (.ci/run) runs these same targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test test-unit test-integration test-acceptance lint format typecheck bench bench-peers clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv, install asyncjobs with its dev extras and Debian's chromium
	@$(SHELL) .ci/install-chromium  # for the dashboard's browser test; says what to run if it cannot

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "asyncjobs needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install ## Run a demo node with the example plug-ins (finds or starts a Postgres)
	$(BIN)/python -m plugins_example.demo

test: install ## Run every test (unit, integration on real Postgres, acceptance)
	$(BIN)/python -m pytest

test-unit: install ## Run the unit tests only (seconds, no I/O)
	$(BIN)/python -m pytest tests/unit

test-integration: install ## Run the tests against real Postgres
	$(BIN)/python -m pytest tests/integration

test-acceptance: install ## Run the tests that start real node processes
	$(BIN)/python -m pytest tests/acceptance

lint: install ## Check style and common bugs (ruff)
	$(BIN)/ruff check src tests bench plugins_example examples
	$(BIN)/ruff format --check src tests bench plugins_example examples

format: install ## Reformat the code (ruff)
	$(BIN)/ruff check --fix src tests bench plugins_example examples
	$(BIN)/ruff format src tests bench plugins_example examples

typecheck: install ## Type-check src/ with mypy --strict
	$(BIN)/mypy

bench: install ## Run the benchmarks, print a table, update bench/RESULTS.md
	$(BIN)/python -m bench

bench-peers: install ## Run the same workloads on asyncjobs, procrastinate, arq and Celery; update bench/RESULTS.md
	$(BIN)/python -m bench.peers

clean: ## Remove the virtualenv, caches and private Postgres clusters
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .asyncjobs bench/.peers
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
