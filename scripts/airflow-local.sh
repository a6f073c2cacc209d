#!/usr/bin/env bash
# `make up` / `make down`: Airflow's components (api-server, scheduler, dag-processor,
# triggerer) on this machine, plus the sample registry, with the same embedded defaults
# as `make run`.  UI: http://127.0.0.1:8080 — user admin, password admin.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
RUN=$PROJECT/.run/airflow
mkdir -p "$RUN"
export PATH=$PROJECT/.venv/bin:$PATH
unset PYTHONDONTWRITEBYTECODE
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PROJECT/.airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$PROJECT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$PROJECT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW__API__BASE_URL=http://127.0.0.1:${AIRFLOW_PORT:-8080}
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:${AIRFLOW_PORT:-8080}/execution/
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/passwords.json
export REFRESHER_LOCAL_BLOB_DIR=${REFRESHER_LOCAL_BLOB_DIR:-$PROJECT/.run/blobs}
export REFRESHER_ALLOW_PRIVATE_ADDRESSES=${REFRESHER_ALLOW_PRIVATE_ADDRESSES:-true}
SAMPLE_PORT=${SAMPLE_REGISTRY_PORT:-8765}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

stop() {
  for name in api-server scheduler dag-processor triggerer sample-registry; do
    if [ -f "$RUN/$name.pid" ]; then
      kill -TERM -- "-$(cat "$RUN/$name.pid")" 2>/dev/null || true
      rm -f "$RUN/$name.pid"
    fi
  done
  # LocalExecutor workers ignore SIGTERM while the scheduler waits for them (see the docs).
  sleep 3
  pkill -KILL -f "airflow scheduler" 2>/dev/null || true
  echo "stopped"
}

start() {
  mkdir -p "$AIRFLOW_HOME"
  [ -f "$AIRFLOW_HOME/passwords.json" ] || echo '{"admin": "admin"}' > "$AIRFLOW_HOME/passwords.json"
  if pg_up; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='iati_airflow'" | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE iati_airflow"
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='iati_refresher'" | grep -q 1 \
      || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE iati_refresher"
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-postgresql+psycopg://postgres@127.0.0.1:5432/iati_airflow}
    export AIRFLOW_CONN_REFRESHER_DB=${AIRFLOW_CONN_REFRESHER_DB:-postgresql://postgres@127.0.0.1:5432/iati_refresher}
  else
    echo "No PostgreSQL on 127.0.0.1:5432: set AIRFLOW_CONN_REFRESHER_DB (and a metadata DB) first" >&2
    exit 1
  fi
  if [ -z "${AIRFLOW_CONN_IATI_REGISTRY:-}" ]; then
    setsid python -m iati_refresher.sample.server --host 127.0.0.1 --port "$SAMPLE_PORT" \
      > "$RUN/sample-registry.log" 2>&1 & echo $! > "$RUN/sample-registry.pid"
    export AIRFLOW_CONN_IATI_REGISTRY=http://127.0.0.1:$SAMPLE_PORT
  fi
  airflow db migrate > "$RUN/db-migrate.log" 2>&1
  python -m iati_refresher.airflow_setup
  for name in api-server scheduler dag-processor triggerer; do
    setsid airflow "$name" > "$RUN/$name.log" 2>&1 & echo $! > "$RUN/$name.pid"
  done
  for _ in $(seq 1 90); do
    if curl -fs "http://127.0.0.1:${AIRFLOW_PORT:-8080}/api/v2/monitor/health" >/dev/null; then
      echo "Airflow UI: http://127.0.0.1:${AIRFLOW_PORT:-8080}  (user admin, password admin); logs in $RUN"
      echo "Unpause iati_refresh in the UI (or: airflow dags unpause iati_refresh) to start the schedule."
      return 0
    fi
    sleep 1
  done
  echo "Airflow did not become healthy in 90 s; see $RUN/*.log" >&2
  exit 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
