# make test: install into .venv, check services, lint, type-check, build the docs, run every test.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install services lint typecheck docs docs-build test unit integration demo bench bench-peers fleet fleet-test fleet-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

services:
	scripts/services.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The example tests' real-worker case and the pytest plugin's PostgreSQL fixtures use it.
export CELERY_DURABLE_TEST_PG ?= postgresql://root@127.0.0.1:5432/postgres

# The documentation site (mkdocs.yml): built strictly into build/site (a broken link, anchor or
# reference fails it); `make docs` serves it with live reload. Its snippets run in pytest
# (tests/docs/).
export NO_MKDOCS_2_WARNING = 1

docs-build: install
	$(BIN)/mkdocs build --strict

docs: install
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

test: install services lint typecheck docs-build
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install services
	$(BIN)/pytest tests/integration

demo: install
	$(BIN)/celery-durable demo

bench: install services
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/store.py
	$(PY) bench/tags.py
	$(PY) bench/engine.py --timeouts
	$(PY) bench/engine.py --inline-nodes 0
	$(PY) bench/engine.py --fan-out
	$(PY) bench/memory.py
	$(PY) bench/waits.py

bench-peers: install services
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/peers.py

fleet:
	docker compose up -d --build

fleet-test:
	docker compose --profile tests run --rm tests

fleet-down:
	docker compose down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
