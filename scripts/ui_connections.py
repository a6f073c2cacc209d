"""`make ui-connections`: every connection type the refresher uses, in Airflow's own UI, with
the result of its Test button — against real services where they run here.

Starts PostgreSQL, Azurite and a real SolrCloud (solr/runner), loopback stand-ins for the IATI
Validator API, the registry (the sample Bulk Data Service) and the Communications Hub, and an
Airflow API server and scheduler (``AIRFLOW__CORE__TEST_CONNECTION=Enabled``).  For each
connection it opens *Admin → Connections*, opens the connection's form (its fields as this
provider or the Azure / PostgreSQL provider define them), clicks the row's Test button and
screenshots form and result into ``.run/ui-check/connection-<id>.png``; then tests it again
with a wrong secret (or an unreachable address) and screenshots the failure
(``connection-<id>-failing.png``).  It fails (exit 1) when a test does not show the expected
outcome.

The connections carry a port: Airflow 3.3.2's Test button sends ``port: 0`` for a connection
without one, which its API refuses with "Bad Request" (apache/airflow#73298, fixed after 3.3.2).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts"))
OUT = PROJECT / ".run" / "ui-check"

ROW_BUTTON = """(() => {{
  const row = [...document.querySelectorAll('tbody tr')]
    .find(r => r.cells[1] && r.cells[1].innerText.trim() === {conn_id});
  if (!row) return 'no row';
  row.querySelector('button[aria-label="{label}"]').click();
  return 'clicked';
}})()"""
TOAST = """(() => {{
  const t = [...document.querySelectorAll('[data-scope=toast][data-part=root], [role=status], [role=alert]')]
    .map(e => e.innerText).filter(x => x.includes('Test Connection'));
  return t.length ? t.join('\\n') : ''; }})()"""


def connections(services_: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    """(connection id, the connection, the same made to fail, what the failure must show)."""
    validator, registry, hub, solr, azurite, db = (
        services_[k] for k in ("validator", "registry", "hub", "solr", "azurite", "db")
    )
    solr_port = int(urllib.parse.urlsplit(solr.url).port)
    db_port = int(db.rsplit(":", 1)[1].split("/")[0])
    db_name = db.rsplit("/", 1)[1]
    return [
        (
            "refresher_db",
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": db_port,
                "login": "postgres",
                "schema": db_name,
                "extra": json.dumps({"sslmode": "disable"}),
            },
            {"schema": "no_such_database"},
            "no_such_database",
        ),
        (
            "refresher_blob",
            {
                "conn_type": "wasb",
                "port": azurite.blob_port,
                "extra": json.dumps({"connection_string": azurite.connection_string}),
            },
            {"extra": json.dumps({"connection_string": azurite.connection_string.replace("Eby8", "Xby8")})},
            "AuthorizationFailure|Authentication|signature",
        ),
        (
            "iati_registry",
            {"conn_type": "iati_registry", "host": "http://127.0.0.1", "port": registry.port},
            {"extra": json.dumps({"dataset_index_path": "/no-such-index"})},
            "404",
        ),
        (
            "iati_validator",
            {
                "conn_type": "iati_validator",
                "host": "http://127.0.0.1",
                "port": urllib.parse.urlsplit(validator.url).port,
                "password": "ui-validator-key",
                "extra": json.dumps({"key_name": validator.key_name}),
            },
            {"password": "wrong-key"},
            "401|403",
        ),
        (
            "solr",
            {"conn_type": "iati_solr", "host": "http://127.0.0.1", "port": solr_port, "schema": "solr"},
            {"schema": "not-solr"},
            "404|error",
        ),
        (
            "iati_commshub",
            {
                "conn_type": "iati_commshub",
                "host": "http://127.0.0.1",
                "port": hub.port,
                "schema": "api/pvt/notification",
                "password": "ui-hub-key",
            },
            {"password": "wrong-key"},
            "401",
        ),
    ]


def main() -> int:
    import re

    from ui_check import Browser
    from ui_failed_run import chromium

    from iati_refresher.local.solr import LocalSolrCloud
    from iati_refresher.local.stack import AirflowStack, StackError
    from iati_refresher.sample.server import SampleRegistryServer
    from tests.standins.commshub_server import CommsHubStandin
    from tests.standins.validator_server import ValidatorStandin
    from tests.support import services

    OUT.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    with ExitStack() as stack_:
        azurite = services.Azurite().start()
        stack_.callback(azurite.stop)
        refresher_db = services.create_database()
        metadata = services.create_database()
        stack_.callback(services.drop_database, refresher_db)
        stack_.callback(services.drop_database, metadata)
        running = {
            "azurite": azurite,
            "db": services.airflow_uri(refresher_db),
            "validator": stack_.enter_context(ValidatorStandin(key="ui-validator-key")),
            "registry": stack_.enter_context(SampleRegistryServer("127.0.0.1", 0)),
            "hub": stack_.enter_context(CommsHubStandin(key="ui-hub-key")),
            "solr": stack_.enter_context(LocalSolrCloud(nodes=1, heap_mb=512)),
        }
        airflow = AirflowStack(
            home=OUT / "airflow-connections",
            metadata_uri=services.airflow_uri(metadata, driver="postgresql+psycopg"),
            api_port=services.free_port(),
            executor="LocalExecutor",
            triggerer=False,
            environment={"REFRESHER_ALLOW_PRIVATE_ADDRESSES": "true", "REFRESHER_REFRESH_SCHEDULE": "none"},
        )
        airflow.start()
        stack_.callback(airflow.stop)
        browser = Browser(chromium(), OUT / "chrome-profile-connections")
        stack_.callback(browser.close)
        browser.sign_in(airflow.base_url)
        for conn_id, conn, broken, failure in connections(running):
            for variant, fields, expect in (
                ("", conn, "Test Connection Successful"),
                ("-failing", {**conn, **broken}, "Test Connection Failed"),
            ):
                with contextlib.suppress(StackError):  # not there yet
                    airflow.api("DELETE", f"/connections/{conn_id}")
                airflow.api("POST", "/connections", {"connection_id": conn_id, **fields})
                browser.open(
                    f"{airflow.base_url}/connections",
                    f"document.body.innerText.includes({conn_id!r})",
                    "the connection list",
                )
                browser.evaluate(ROW_BUTTON.format(conn_id=json.dumps(conn_id), label="Edit Connection"))
                time.sleep(1.5)
                browser.evaluate(ROW_BUTTON.format(conn_id=json.dumps(conn_id), label="Test Connection"))
                deadline, toast = time.monotonic() + 60, ""
                while time.monotonic() < deadline and not toast:
                    toast = browser.evaluate(TOAST.format()) or ""
                    time.sleep(0.3)
                time.sleep(0.5)
                shot = browser.screenshot(OUT / f"connection-{conn_id}{variant}.png", width=1400, height=1000)
                print(f"{conn_id}{variant}: {' / '.join(toast.splitlines())}  ->  {shot}")
                if expect not in toast or (variant and not re.search(failure, toast)):
                    failures.append(f"{conn_id}{variant}: expected {expect!r}, saw {toast!r}")
    for failure in failures:
        print("FAILED", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
