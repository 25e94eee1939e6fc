# The two commands: `make run` (the whole system on the embedded default) and
# `make test` (the whole suite). Both install what is missing into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser prometheus run test test-cluster lint bench-ingest bench-worker bench-e2e bench-broadcaster bench-history bench-cluster clean

$(STAMP): pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e ./client
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m scoreboard.cli run

# The spectator page's browser test drives Debian's chromium (Playwright downloads
# no browser); only the tests need it, so `make run` does not fetch it.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# tests/test_prometheus.py runs Debian's prometheus against the test's own processes
# (promtool, which CI uses on ops/, comes with it).
prometheus:
	@test -x /usr/bin/prometheus || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

test: install browser prometheus
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite against a 3-master Redis Cluster started from the embedded default's
# redis-server (scoreboard/embedded_cluster.py), players over 3 shards.
test-cluster: install browser prometheus
	REDIS_CLUSTER=1 REDIS_SHARDS=3 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy . .ci/wheel_smoke.py

bench-ingest: install
	$(PY) -m loadtest.bench_ingest $(BENCH_ARGS)

bench-worker: install
	$(PY) -m loadtest.bench_worker $(BENCH_ARGS)

bench-e2e: install
	$(PY) -m loadtest.bench_e2e $(BENCH_ARGS)

bench-broadcaster: install
	$(PY) -m loadtest.bench_broadcaster $(BENCH_ARGS)

bench-history: install
	$(PY) -m loadtest.bench_history $(BENCH_ARGS)

bench-cluster: install
	$(PY) -m loadtest.bench_cluster $(BENCH_ARGS)

.PHONY: fraud-sim
fraud-sim: install
	$(PY) -m loadtest.fraud_sim $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
