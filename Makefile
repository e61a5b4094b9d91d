# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-unit proto bench-ingest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start PostgreSQL and Kafka locally, apply migrations, create a demo tenant, serve in the foreground.
run: install
	$(VENV)/bin/billing dev

## The whole suite: unit tests, then integration tests against real PostgreSQL and Kafka the tests start.
test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

## Regenerate the gRPC code from schemas/proto (a test fails when it is stale).
proto: install
	$(PY) -m billing.devtools.protogen

## Usage ingestion end to end vs a naive baseline; last line: ingest_events_per_s=<n> ratio_vs_naive=<r>
bench-ingest: install
	$(PY) -m bench.ingest $(ARGS)

clean:
	rm -rf $(VENV) .state .pytest_cache
