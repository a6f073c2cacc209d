#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use (127.0.0.1:5432, trust auth) is running.
set -euo pipefail
host=${REFRESHER_TEST_PG_HOST:-127.0.0.1}
if pg_isready -q -h "$host" -p 5432 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  for _ in $(seq 1 30); do pg_isready -q -h "$host" -p 5432 && exit 0; sleep 1; done
fi
echo "PostgreSQL is not reachable on $host:5432 and could not be started." >&2
echo "Install it (Debian: apt-get install postgresql) or set REFRESHER_TEST_PG to a libpq conninfo." >&2
exit 1
