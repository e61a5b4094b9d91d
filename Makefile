# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install native constraints wheel system-deps run lint test test-unit test-chaos test-chaos-alerts test-cluster proto bench-ingest bench-ingest-sql bench-peer bench-billing bench-grpc-usage bench-load bench-entitlements bench-alert-lag dashboard clean

# Dependencies at the versions of constraints.txt (reproducible installs; the Dockerfile uses it too).
$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Hot pure-Python modules compiled with mypyc when the machine can (a C compiler, Python's
# headers): billing/native.py uses a build only if made from the source as it is now, else the
# module as written; a build that fails warns and leaves the pure module (docs/decisions.md).
NATIVE_SOURCES := consumers/usage_avro.py billing/services/usage_short.py
NATIVE_STAMP   := billing/_native/.built

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES) billing/native.py billing/devtools/native_build.py
	$(PY) -m billing.devtools.native_build $(NATIVE_SOURCES)
	@mkdir -p billing/_native && touch $(NATIVE_STAMP)

install: $(STAMP) $(NATIVE_STAMP)

## Rebuild the compiled modules now (make install does when their sources changed).
native: $(STAMP)
	$(PY) -m billing.devtools.native_build $(NATIVE_SOURCES)
	@mkdir -p billing/_native && touch $(NATIVE_STAMP)

## Re-pin constraints.txt to what the venv holds now (after changing dependencies in pyproject.toml:
## `$(PY) -m pip install -U -e '.[dev]'` first, then this, then run the tests).
constraints: install
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

## The wheel users install (schemas and migrations inside): dist/billing_service-<version>-py3-none-any.whl
wheel: install
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

# kcat (a Kafka client that is not ours) produces CloudEvents in one test. Debian package.
# grpcurl runs the README's grpcurl example (tests/e2e/test_readme.py). Go module proxy.
system-deps:
	@command -v kcat >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq kcat >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kcat)); } || \
		echo "kcat is not installed and could not be installed (apt-get install kcat); its test will fail"
	@command -v grpcurl >/dev/null 2>&1 || test -x $(HOME)/go/bin/grpcurl || \
		{ command -v go >/dev/null 2>&1 && timeout 300 go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4; } || \
		echo "grpcurl could not be installed (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4); the README test skips its grpcurl block"

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

## Usage alerts exactly once with the usage consumer SIGKILLed mid-stream (part of `make test` and
## of test-chaos, 3 kills). Longer: make test-chaos-alerts ALERTS_CHAOS_KILLS=10 [CHAOS_ROUNDS=3] [CHAOS_SEED=n]
test-chaos-alerts: install
	$(PY) -m pytest -m chaos -s tests/chaos/test_alerts_chaos.py

## The cluster test alone: three SASL_SSL brokers, one SIGKILLed, one wiped, under load (part of
## `make test` in its bounded form). Longer: make test-cluster CLUSTER_SECONDS=300 [CLUSTER_SEED=n]
test-cluster: install
	$(PY) -m pytest -m cluster -s tests/cluster

## The abuse suite alone: gRPC fuzzing of every RPC, topic abuse, the tenant isolation matrix
## (part of `make test` in its bounded form). The big run: make test-abuse FUZZ_EXAMPLES=3000
test-abuse: install
	$(PY) -m pytest tests/abuse tests/unit/test_payload_abuse.py

## Regenerate the gRPC code from schemas/proto (a test fails when it is stale).
proto: install
	$(PY) -m billing.devtools.protogen

## Usage ingestion end to end vs a naive baseline; last line: ingest_events_per_s=<n> ratio_vs_naive=<r> cpu_us_per_event=<c> ...
bench-ingest: install
	$(PY) -m bench.ingest $(ARGS)

## PostgreSQL's share of ingestion alone (own server, pg_stat_statements); last line:
## pg_cpu_us_per_event=<c> wal_bytes_per_event=<w> events=<n> batch=<b>
bench-ingest-sql: install
	$(PY) -m bench.ingest_sql $(ARGS)

## The same messages through Kafka Connect + the Debezium JDBC sink (jars from Maven Central) and through
## our usage consumers, alternating (ARGS="--events 200000 --runs 1" for a short run);
## last line: peer_events_per_s=<p> ours_events_per_s=<o> ratio=<o/p> peer_cpu_us=<c> ours_cpu_us=<u>
bench-peer: install
	$(PY) -m bench.peer $(ARGS)

## One billing run over N subscriptions vs one subscription per transaction;
## last line: billing_subs_per_s=<n> ratio_vs_naive=<r> cpu_us_per_sub=<c> published_subs_per_s=<p>
bench-billing: install
	$(PY) -m bench.billing $(ARGS)

## RecordUsage (one transaction per call, then group commit; 50 concurrent calls from ghz, built with
## Go on the first run, or ARGS="--client python") and RecordUsageBatch (50 client processes);
## last line: grpc_usage_calls_per_s=<n> p99_ms=<x> batch_events_per_s=<b> errors=<k> ... client_cpu_us=<u>
bench-grpc-usage: install
	$(PY) -m bench.grpc_usage $(ARGS)

## Sustained usage ingestion + gRPC reads + a billing run, against reads alone in the same run;
## last line: load_events_per_s=<n> grpc_p99_ms=<x> errors=<k> p99_while_billing_run_ms=<r>
## api_cpu_us_per_read=<a> baseline_api_cpu_us_per_read=<b> baseline_postgres_cpu_us_per_read=<p>
bench-load: install
	$(PY) -m bench.load $(ARGS)

## CheckEntitlement, 50 concurrent calls from ghz (ARGS="--client python": 50 processes), while usage
## ingests at 20,000 events/s, against the same checks alone in the same run;
## last line: entitlement_checks_per_s=<n> p99_ms=<x> errors=<k> ... client_cpu_us=<u>
bench-entitlements: install
	$(PY) -m bench.entitlements $(ARGS)

## The threshold alert lag with nothing else running (bench/alert_lag_alone.py; --statements for
## the usage batch's statements).
bench-alert-lag: install
	$(PY) -m bench.alert_lag_alone $(ARGS)

## Regenerate deploy/grafana/dashboards/billing.json (a test fails when it is stale).
dashboard: install
	$(PY) deploy/grafana/build_dashboard.py

clean:
	rm -rf $(VENV) .state .pytest_cache billing/_native
