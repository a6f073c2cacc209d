"""`make ui-failed-run`: what a failed batch looks like in Airflow, on a real scheduler.

Starts the tests' world (PostgreSQL, Azurite, loopback stand-ins for the registry, the
Validator, Solr and Slack), makes the database reject every write of the clean stage's
results (the fault of ``tests/e2e/test_faults.py``), runs ``iati_refresh`` on a real
scheduler (LocalExecutor) through the REST API, and screenshots with headless Chromium:

* ``.run/ui-check/failed-run-grid.png``: the run, red, with its clean batch failed after
  three tries;
* ``.run/ui-check/failed-batch-log.png``: that batch's task page and log.

It prints the one Slack message the run sent.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts"))
OUT = PROJECT / ".run" / "ui-check"


def chromium() -> str:
    import os
    import shutil
    import subprocess

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "-qq", "install", "-y", "chromium"], env=env, check=True, capture_output=True)
        found = shutil.which("chromium")
    if found is None:
        raise SystemExit("no chromium: install Debian's chromium package")
    return found


def main() -> int:
    import pytest
    from ui_check import Browser

    from iati_refresher.local.stack import AirflowStack
    from tests.e2e.world import open_world
    from tests.support import services

    OUT.mkdir(parents=True, exist_ok=True)
    azurite = services.Azurite().start()
    refresher = services.create_database()
    metadata = services.create_database()
    stack = None
    try:
        from iati_refresher.db import migrate
        from iati_refresher.db.connection import connection
        from iati_refresher.settings import get_settings

        with connection(services.conninfo(refresher)) as conn:
            migrate.migrate(conn, get_settings().migrations_dir)
        with pytest.MonkeyPatch.context() as mp, open_world("uifailed", refresher, azurite, mp) as world:
            world.publish_corpus()
            world.refuse_clean_results()
            env = {**world.environment(), "REFRESHER_REFRESH_SCHEDULE": "none", "REFRESHER_TASK_RETRY_DELAY_S": "1"}
            stack = AirflowStack(
                home=OUT / "airflow-failed-run",
                metadata_uri=services.airflow_uri(metadata, driver="postgresql+psycopg"),
                api_port=services.free_port(),
                environment=env,
            )
            stack.start()
            run_id = stack.trigger("iati_refresh")
            state = stack.wait_for_run("iati_refresh", run_id, timeout_s=600)
            print(f"iati_refresh run {run_id}: {state}")
            for message in world.slack.messages:
                print("Slack:", message.text)
            browser = Browser(chromium(), OUT / "chrome-profile-failed-run")
            try:
                browser.sign_in(stack.base_url)
                quoted = urllib.parse.quote(run_id, safe="")
                browser.open(
                    f"{stack.base_url}/dags/iati_refresh/runs/{quoted}",
                    "document.body.innerText.includes('summary')",
                    "the run page",
                )
                time.sleep(3)
                print(browser.screenshot(OUT / "failed-run-grid.png", width=1600, height=1000))
                browser.open(
                    f"{stack.base_url}/dags/iati_refresh/runs/{quoted}/tasks/clean/mapped/0",
                    "document.body.innerText.includes('batch_failed')",
                    "the batch's log",
                )
                time.sleep(2)
                print(browser.screenshot(OUT / "failed-batch-log.png", width=1600, height=1000))
            finally:
                browser.close()
    finally:
        if stack is not None:
            stack.stop()
        azurite.stop()
        for name in (refresher, metadata):
            services.drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
