# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run lint test test-unit test-chaos proto bench-ingest bench-billing bench-load dashboard clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# kcat (a Kafka client that is not ours) produces CloudEvents in one test. Debian package.
system-deps:
	@command -v kcat >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq kcat >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kcat)); } || \
		echo "kcat is not installed and could not be installed (apt-get install kcat); its test will fail"

## Start PostgreSQL and Kafka locally, apply migrations, create a demo tenant, serve in the foreground.
run: install
	$(VENV)/bin/billing dev

## Lint (ruff), types (mypy) and the import contracts (lint-imports); config in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check billing consumers producers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## The whole suite: lint, unit tests, then integration tests against real PostgreSQL and Kafka the tests start.
test: install system-deps lint
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

## The chaos suite alone (kills roles, restarts Kafka and PostgreSQL; part of `make test` in
## its bounded form). Longer: make test-chaos CHAOS_SECONDS=600 [CHAOS_ROUNDS=5] [CHAOS_SEED=n]
test-chaos: install
	$(PY) -m pytest -m chaos -s tests/chaos

## The abuse suite alone: gRPC fuzzing of every RPC, topic abuse, the tenant isolation matrix
## (part of `make test` in its bounded form). The big run: make test-abuse FUZZ_EXAMPLES=3000
test-abuse: install
	$(PY) -m pytest tests/abuse tests/unit/test_payload_abuse.py

## Regenerate the gRPC code from schemas/proto (a test fails when it is stale).
proto: install
	$(PY) -m billing.devtools.protogen

## Usage ingestion end to end vs a naive baseline; last line: ingest_events_per_s=<n> ratio_vs_naive=<r>
bench-ingest: install
	$(PY) -m bench.ingest $(ARGS)

## One billing run over N subscriptions vs one subscription per transaction;
## last line: billing_subs_per_s=<n> ratio_vs_naive=<r>
bench-billing: install
	$(PY) -m bench.billing $(ARGS)

## Sustained usage ingestion + gRPC reads + a billing run, against reads alone in the same run;
## last line: load_events_per_s=<n> grpc_p99_ms=<x> errors=<k>   (ARGS="--seconds 15" for a short run)
bench-load: install
	$(PY) -m bench.load $(ARGS)

## Regenerate deploy/grafana/dashboards/billing.json (a test fails when it is stale).
dashboard: install
	$(PY) deploy/grafana/build_dashboard.py

clean:
	rm -rf $(VENV) .state .pytest_cache
