# IATI Refresher on Airflow — the commands a newcomer runs.
#   make run    the whole pipeline once, offline, on embedded defaults (sample registry)
#   make test   the whole test suite (installs everything it needs first)
#   make check  code quality: ruff, ruff format --check, mypy, the lock matches requirements*.txt
#   make test-fast  the unit tier: no PostgreSQL, no Azurite, no Airflow run (about half a minute)
#   make up     Airflow locally (http://127.0.0.1:8080, admin / admin); EXECUTOR=celery for Celery workers
#   make down   stop what make up / make run started

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
unexport PYTHONDONTWRITEBYTECODE
STAMP := $(VENV)/.deps-stamp
SCHEMAS := include/iati_refresher/validation/schemas/SOURCE.txt
AZURITE := tools/node_modules/.bin/azurite-blob
export REFRESHER_LOCAL_PG_PORT ?= 55432

.PHONY: deps check run test test-fast up down trigger solr ui-failed-run ui-connections lint lock ui-check bench conformance clean services

deps: $(STAMP) $(SCHEMAS) $(AZURITE)

# The venv: uv from PyPI once, then the committed lock, compiled to bytecode (Airflow
# imports ~2x faster in every task and test process).  The package is installed without
# build isolation so that its compiled tree walks (setup.py) are built against the very
# lxml they run with; a C compiler and Python's headers are needed for that.
$(STAMP): requirements.lock pyproject.toml setup.py include/iati_refresher/iati/_compiled.pyx
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m uv --version >/dev/null 2>&1 || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null; \
	  $(PY) -m pip install -q "uv==0.13.9"; }
	UV_COMPILE_BYTECODE=1 $(PY) -m uv pip sync -q -p $(PY) requirements.lock
	@command -v cc >/dev/null || command -v gcc >/dev/null || { echo "A C compiler is needed to build the tree walks: apt-get install gcc (or build-essential)"; exit 1; }
	$(PY) -m uv pip install -q -p $(PY) --no-deps --no-build-isolation --reinstall-package iati-refresher -e .
	@$(PY) -c "from iati_refresher.iati.accelerated import PROBLEM; assert PROBLEM is None, PROBLEM"
	@touch $(STAMP)

$(SCHEMAS): $(STAMP)
	$(PY) -m iati_refresher.validation.fetch_schemas

$(AZURITE): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	@touch $(AZURITE)

# The project's own PostgreSQL cluster (.run/pg on 127.0.0.1:$(REFRESHER_LOCAL_PG_PORT)), for
# benchmarks and ui-check; `make run` and `make up` start it themselves, `make down` stops it.
# (`make test` starts a throw-away cluster of its own.)
services: deps
	@$(PY) -m iati_refresher.local.servers postgres start --dir .run/pg --port $(REFRESHER_LOCAL_PG_PORT)

test: deps
	$(PY) -m pytest -q

# The unit tier: tests/unit and tests/dags without the tests that use a service fixture (they
# are marked `services` by tests/conftest.py); REFRESHER_TEST_NO_SERVICES makes any server a
# test would start anyway fail at once instead.
test-fast: $(STAMP) $(SCHEMAS)
	REFRESHER_TEST_NO_SERVICES=1 $(PY) -m pytest -q -m "not services and not e2e and not deploy and not solr and not slow" tests/unit tests/dags

# Code quality, as CI runs it before the tests (pyproject.toml configures each tool).
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) scripts/check_lock.py

run: deps
	$(PY) scripts/run_sample.py

EXECUTOR ?= local
up: deps
	$(PY) scripts/local_stack.py up --executor $(EXECUTOR)

trigger:
	$(PY) scripts/local_stack.py trigger $(or $(DAG),iati_refresh)

down:
	@if [ -x $(PY) ]; then $(PY) scripts/local_stack.py down; else echo "nothing to stop (no venv)"; fi

# A real SolrCloud (Solr 9.10.1 from Maven Central, solr/runner) on loopback, in the foreground.
solr: deps
	$(PY) -m iati_refresher.local.solr

ui-check: deps
	scripts/ui-check.sh

# A run whose clean batch fails after its retries, on a real scheduler, screenshotted
# (.run/ui-check/failed-run-grid.png, failed-batch-log.png).
ui-failed-run: deps
	$(PY) scripts/ui_failed_run.py

# Every connection type in Airflow's UI with its Test button's result, against real services
# and stand-ins (.run/ui-check/connection-*.png).
ui-connections: deps
	$(PY) scripts/ui_connections.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

lock:
	$(PY) -m uv pip compile -q --python-version 3.11 requirements-dev.txt -o requirements.lock

bench: deps
	$(PY) bench/stages.py ../shared/corpus

conformance: deps
	$(PY) bench/conformance.py ../shared/conformance

clean:
	rm -rf .run .airflow $(VENV) tools/node_modules
