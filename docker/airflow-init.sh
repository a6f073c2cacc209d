#!/usr/bin/env bash
# The compose stack's one-shot initialisation (service airflow-init):
#   1. migrate Airflow's metadata database;
#   2. create or update the pools the DAGs use;
#   3. set the admin user's password (simple auth manager: users come from
#      [core] simple_auth_manager_users, passwords from the shared passwords file);
#   4. migrate the refresher database to the code's latest migration.
# Every step is idempotent: running it again changes nothing.
set -euo pipefail

echo "airflow-init: migrating the Airflow metadata database"
airflow db migrate

echo "airflow-init: pools"
python -m iati_refresher.airflow_setup

passwords_file=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}
echo "airflow-init: admin user ${AIRFLOW_ADMIN_USER:-admin} (password file ${passwords_file})"
mkdir -p "$(dirname "$passwords_file")"
# Written with Python, so any character in the password is JSON-escaped correctly.
python - "$passwords_file" <<'PY'
import json, os, sys
path = sys.argv[1]
with open(path, "w", encoding="utf-8") as f:
    json.dump({os.environ.get("AIRFLOW_ADMIN_USER", "admin"): os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
os.chmod(path, 0o600)
PY

echo "airflow-init: migrating the refresher database"
refresher db upgrade
echo "airflow-init: done"
