#!/usr/bin/env bash
# `make ui-check`: start Airflow's API server with the status plugin on a seeded refresher
# database, log in, and screenshot the pages with headless Chromium (.run/ui-check/*.png).
# Uses the project's PostgreSQL cluster (.run/pg, started when needed) and installs Debian's chromium when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONDONTWRITEBYTECODE

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "ui-check: installing Debian's chromium"
    DEBIAN_FRONTEND=noninteractive apt-get -qq update
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y chromium >/dev/null
  else
    echo "ui-check: chromium is not installed (Debian: apt-get install chromium)" >&2
    exit 2
  fi
fi
exec .venv/bin/python scripts/ui_check.py "$@"
