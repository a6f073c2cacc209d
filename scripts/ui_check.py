"""`make ui-check`: look at the status page the way a person would.

1. a throw-away Airflow home (``.run/ui-check/airflow-home``, SQLite metadata) and a fresh
   refresher database ``iati_uicheck`` on the local PostgreSQL, seeded with datasets in
   the states the page explains (indexed, partly valid, excluded, parked, retrying…);
2. the DAGs serialised and Airflow's API server started on a free loopback port;
3. a login (``POST /auth/token``), the JSON API checked with and without the token;
4. headless Chromium, given the UI's ``_token`` cookie through the DevTools protocol,
   screenshots the page inside the Airflow UI (*Browse → IATI datasets*), the page on its
   own, one dataset's detail page and the DAG list into ``.run/ui-check/*.png``.

It fails (exit 1) when a page shows an error or misses what it must show, and prints the
screenshot paths.  Everything it started is stopped again; ``--keep`` leaves the refresher
database for a closer look.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
OUT = PROJECT / ".run" / "ui-check"
DB_NAME = "iati_uicheck"
ADMIN_PASSWORD = "ui-check-" + secrets.token_hex(4)


class CheckFailed(RuntimeError):
    """What a person would have seen as broken."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(f"ui-check: {message}", flush=True)


# ---------------------------------------------------------------------------------------
# the refresher database, seeded
# ---------------------------------------------------------------------------------------


def project_postgres():
    """The project's own PostgreSQL cluster (.run/pg), started when it is not running."""
    from iati_refresher.local.servers import LocalPostgres

    return LocalPostgres(PROJECT / ".run" / "pg", int(os.environ.get("REFRESHER_LOCAL_PG_PORT") or 55432)).start()


def fresh_database() -> str:
    return project_postgres().create_database(DB_NAME, fresh=True)


def drop_database() -> None:
    project_postgres().drop_database(DB_NAME)


def seed(conn: Any) -> int:
    """Datasets of three publishers, one per situation the page must explain."""
    from iati_refresher.db import repository as repo

    now = datetime.utcnow().replace(microsecond=0)
    publishers = [
        ("XM-DAC-41001", "meadowlark", "Meadowlark Trust"),
        ("XM-DAC-41002", "riverbend", "Riverbend Water Board"),
        ("XM-DAC-41003", "condor-verde", "Fundación Cóndor Verde"),
    ]
    for org_id, name, title in publishers:
        repo.upsert_publisher(conn, {"org_id": org_id, "name": name, "title": title}, now - timedelta(days=30))

    def report(
        valid: bool,
        *,
        file_type: str = "iati-activities",
        version: str = "2.03",
        critical: int = 0,
        meta: list[bool] | None = None,
    ) -> dict:
        body = {
            "valid": valid,
            "fileType": file_type,
            "iatiVersion": version,
            "summary": {"critical": critical, "error": 2, "warning": 5, "advisory": 1},
            "errors": [],
        }
        if meta is not None:
            body[file_type] = [
                {"identifier": f"XM-DAC-41001-{i}", "valid": ok, "index": i} for i, ok in enumerate(meta)
            ]
        return body

    def outcome(
        doc: dict, stage: str, status: str, code: str | None = None, message: str | None = None, retryable: bool = False
    ) -> None:
        repo.record_outcomes(
            conn,
            stage,
            [
                {
                    "document_id": doc["id"],
                    "hash": doc["hash"],
                    "status": status,
                    "code": code,
                    "message": message,
                    "retryable": retryable,
                }
            ],
            run_id="scheduled__ui-check",
            max_attempts=5,
            base_delay_s=600,
            max_delay_s=86400,
        )

    def through(doc: dict, last: str, activities: int) -> None:
        for stage in ("clean", "flatten", "lakify", "index")[: ("clean", "flatten", "lakify", "index").index(last) + 1]:
            if stage == "clean":
                repo.finish_clean(conn, doc, ok=True, error=None)
            elif stage == "flatten":
                repo.finish_flatten(conn, doc, ok=True, manifest=[], activities=activities)
            elif stage == "lakify":
                repo.finish_lakify(conn, doc, ok=True, error=None)
            else:
                repo.finish_index(conn, doc, ok=True, error=None, activities=activities)
            outcome(doc, stage, "ok")

    def dataset(n: int, name: str, org_id: str) -> dict:
        doc = {
            "id": f"5e1f0000-0000-4000-8000-{n:012d}",
            "hash": secrets.token_hex(20),
            "name": name,
            "publisher": org_id,
            "url": f"https://data.example.org/iati/{name}.xml",
            "cached_dataset_url": f"https://bulk-data.example.org/dataset/{name}.xml",
        }
        repo.upsert_document(conn, doc, now - timedelta(days=3))
        return doc

    def downloaded(doc: dict) -> None:
        repo.finish_download(conn, [{"id": doc["id"], "hash": doc["hash"], "ok": True, "bytes": 48_213}])
        outcome(doc, "download", "ok")

    def validated(doc: dict, body: dict) -> None:
        repo.save_validation(conn, doc, body, api_error=None, schema_valid=body["valid"])
        outcome(doc, "validate", "ok")

    doc = dataset(1, "meadowlark-activities", "XM-DAC-41001")
    downloaded(doc)
    validated(doc, report(True))
    through(doc, "index", 12)

    doc = dataset(2, "meadowlark-mixed", "XM-DAC-41001")
    downloaded(doc)
    validated(doc, report(False, critical=3, meta=[True, True, False, True, False]))
    through(doc, "index", 3)

    doc = dataset(3, "meadowlark-organisation", "XM-DAC-41001")
    downloaded(doc)
    validated(doc, report(True, file_type="iati-organisations"))
    repo.finish_clean(conn, doc, ok=False, error=None)
    outcome(doc, "clean", "skipped", "organisation_file", "an organisation file: nothing to index")

    doc = dataset(4, "meadowlark-2025", "XM-DAC-41001")
    downloaded(doc)
    validated(doc, report(True))
    through(doc, "index", 40)
    repo.upsert_document(conn, {**doc, "hash": secrets.token_hex(20)}, now)  # republished since

    doc = dataset(5, "riverbend-legacy-v105", "XM-DAC-41002")
    downloaded(doc)
    validated(doc, report(False, version="1.05", critical=1))
    repo.finish_clean(conn, doc, ok=False, error=None)
    outcome(doc, "clean", "skipped", "version_1x", "IATI version 1.05 is not supported")

    doc = dataset(6, "riverbend-sanitation", "XM-DAC-41002")
    downloaded(doc)
    repo.set_schema_result(conn, doc["id"], doc["hash"], valid=False, api_error=None)

    doc = dataset(7, "riverbend-truncated", "XM-DAC-41002")
    downloaded(doc)
    validated(doc, report(True))
    through(doc, "clean", 0)
    repo.finish_flatten(conn, doc, ok=False)
    outcome(
        doc,
        "flatten",
        "failed",
        "parse_error",
        "Could not parse: Premature end of data in tag iati-activity line 212",
        retryable=False,
    )

    doc = dataset(8, "riverbend-projects", "XM-DAC-41002")
    repo.finish_download(conn, [{"id": doc["id"], "hash": doc["hash"], "ok": False, "download_error": 404}])
    outcome(doc, "download", "failed", "http_404", "the server answered 404 Not Found", retryable=False)

    doc = dataset(9, "condor-verde-actividades", "XM-DAC-41003")
    downloaded(doc)
    validated(doc, report(True))
    through(doc, "lakify", 27)

    doc = dataset(10, "condor-verde-2024", "XM-DAC-41003")
    repo.finish_download(conn, [{"id": doc["id"], "hash": doc["hash"], "ok": False, "download_error": 0}])
    outcome(doc, "download", "failed", "connect_timeout", "connection timed out after 60 s", retryable=True)

    dataset(11, "condor-verde-nuevo", "XM-DAC-41003")

    doc = dataset(12, "condor-verde-presupuesto", "XM-DAC-41003")
    downloaded(doc)
    validated(doc, report(True))

    for stage, counts in (
        ("download", (9, 7, 0, 2)),
        ("validate", (7, 7, 0, 0)),
        ("clean", (7, 4, 2, 1)),
        ("flatten", (4, 3, 0, 1)),
        ("lakify", (3, 3, 0, 0)),
        ("index", (2, 2, 0, 0)),
    ):
        docs_in, ok, skipped, failed = counts
        repo.record_telemetry(
            conn,
            {
                "run_id": "scheduled__ui-check",
                "dag_id": "iati_refresh",
                "stage": stage,
                "started_at": now - timedelta(minutes=9),
                "finished_at": now - timedelta(minutes=2),
                "documents_in": docs_in,
                "documents_ok": ok,
                "documents_skipped": skipped,
                "documents_failed": failed,
            },
        )
    conn.commit()
    return 12


# ---------------------------------------------------------------------------------------
# Airflow
# ---------------------------------------------------------------------------------------


def airflow_env(home: Path, port: int, refresher_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REFRESHER_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    base = f"http://127.0.0.1:{port}"
    env.update(
        {
            "PATH": f"{PROJECT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW_CONN_REFRESHER_DB": refresher_uri,
        }
    )
    return env


def run(cmd: list[str], env: dict[str, str], what: str, logfile: Path) -> None:
    with logfile.open("w") as out:
        result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT, timeout=600)
    if result.returncode != 0:
        raise CheckFailed(f"{what} failed (exit {result.returncode}); see {logfile}")


def http(url: str, *, token: str | None = None, data: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = condition()
            if value:
                return value
        time.sleep(interval_s)
    raise CheckFailed(f"{what} (waited {timeout_s:.0f} s)")


def stop(proc: subprocess.Popen | None, grace_s: float = 15) -> None:
    """Stop a process this script started (its own process group, by pid)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---------------------------------------------------------------------------------------
# Chromium through the DevTools protocol
# ---------------------------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={self.port}",
                "--remote-debugging-address=127.0.0.1",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        targets = wait_until(
            lambda: json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list")),
            30,
            "Chromium did not open its DevTools port",
        )
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64_000_000))
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise CheckFailed(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    def sign_in(self, airflow_url: str, username: str = "admin", password: str = "admin") -> None:
        """Sign in to an Airflow 3 UI: a token from its API, set as the UI's cookie."""
        login = json.dumps({"username": username, "password": password}).encode()
        token = json.load(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{airflow_url}/auth/token", data=login, headers={"Content-Type": "application/json"}, method="POST"
                )
            )
        )["access_token"]
        self.call("Network.enable")
        self.call("Network.setCookie", name="_token", value=token, url=airflow_url + "/", httpOnly=True)
        self.call("Page.enable")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str, what: str, timeout_s: float = 45) -> None:
        """Navigate and wait until the JavaScript expression ``ready`` is truthy."""
        self.call("Page.navigate", url=url)
        wait_until(lambda: self.evaluate(ready), timeout_s, f"{what} did not finish loading: {url}")
        time.sleep(1.0)  # let fonts and the last layout settle before the picture

    def screenshot(self, path: Path, *, width: int = 1440, height: int = 900, full_page: bool = False) -> Path:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        if full_page:
            content = self.call("Page.getLayoutMetrics")["cssContentSize"]
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=min(int(content["height"]) + 16, 4000),
                deviceScaleFactor=1,
                mobile=False,
            )
            time.sleep(0.5)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._exit.close()
        stop(self.proc, grace_s=5)


FRAME_TEXT = (
    "(() => { const f = document.querySelector('iframe'); "
    "return f && f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : ''; })()"
)


def expect_text(text: str, where: str, must: list[str]) -> None:
    errors = [e for e in ("Internal Server Error", "Traceback", '"detail"', "not reachable") if e in text]
    if errors:
        raise CheckFailed(f"{where} shows an error ({', '.join(errors)}): {text[:300]!r}")
    missing = [m for m in must if m not in text]
    if missing:
        raise CheckFailed(f"{where} does not show {missing}: {text[:300]!r}")


# ---------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the seeded refresher database afterwards")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        print("ui-check: no chromium on PATH (scripts/ui-check.sh installs Debian's)", file=sys.stderr)
        return 2

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    home = OUT / "airflow-home"
    home.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server: subprocess.Popen | None = None
    browser: Browser | None = None
    shots: list[Path] = []
    try:
        refresher_uri = fresh_database()
        env = airflow_env(home, port, refresher_uri)
        (home / "passwords.json").write_text(json.dumps({"admin": ADMIN_PASSWORD}))

        from iati_refresher.db import migrate
        from iati_refresher.db.connection import connection, resolve_conninfo
        from iati_refresher.settings import get_settings

        os.environ["AIRFLOW_CONN_REFRESHER_DB"] = refresher_uri
        with connection(resolve_conninfo()) as conn:
            migrate.migrate(conn, get_settings().migrations_dir)
            log(f"refresher database {DB_NAME}: seeded {seed(conn)} datasets")

        log("Airflow metadata database and DAGs (throw-away home in .run/ui-check/airflow-home)")
        run(["airflow", "db", "migrate"], env, "airflow db migrate", OUT / "db-migrate.log")
        run(["airflow", "dags", "reserialize"], env, "airflow dags reserialize", OUT / "reserialize.log")

        log(f"starting the API server on {base}")
        server = subprocess.Popen(
            ["airflow", "api-server"],
            env=env,
            cwd=PROJECT,
            start_new_session=True,
            stdout=(OUT / "api-server.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: http(f"{base}/api/v2/monitor/health")[0] == 200,
            120,
            f"the API server did not become healthy; see {OUT / 'api-server.log'}",
            interval_s=1,
        )

        status, body = http(f"{base}/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        if status not in (200, 201):
            raise CheckFailed(f"login failed: HTTP {status} {body[:200]!r}")
        token = json.loads(body)["access_token"]
        anonymous = http(f"{base}/iati-status/api/summary")[0]
        if anonymous != 401:
            raise CheckFailed(f"the status API answered {anonymous} without a login (expected 401)")
        status, body = http(f"{base}/iati-status/api/summary", token=token)
        if status != 200:
            raise CheckFailed(f"/iati-status/api/summary answered {status}: {body[:300]!r}")
        summary = json.loads(body)
        log(f"API: {summary['datasets']['total']} datasets, by state {summary['datasets']['by_state']}")

        browser = Browser(args.chromium, Path(tempfile.mkdtemp(prefix="ui-check-chromium-")))
        browser.call("Network.enable")
        browser.call("Network.setCookie", name="_token", value=token, url=f"{base}/", httpOnly=True)
        browser.call("Page.enable")

        browser.open(f"{base}/plugin/iati-datasets", f"{FRAME_TEXT}.includes('meadowlark-mixed')", "the page in the UI")
        expect_text(
            browser.evaluate(FRAME_TEXT),
            "the page inside the Airflow UI",
            ["IATI datasets", "meadowlark-mixed", "3 of 5 activities kept"],
        )
        menu = browser.evaluate("document.body.innerText")
        shots.append(browser.screenshot(OUT / "status-in-airflow.png"))

        browser.open(
            f"{base}/iati-status/",
            "document.readyState === 'complete' && !!document.querySelector('h1')",
            "the status page",
        )
        expect_text(
            browser.evaluate("document.body.innerText"),
            "the status page",
            [
                "IATI datasets",
                "Partial",
                "Old version",
                "N/A",
                "Gave up at flattening",
                "HTTP 404",
                "still searchable",
                "after the safety period",
            ],
        )
        shots.append(browser.screenshot(OUT / "status-page.png", full_page=True))

        browser.open(
            f"{base}/iati-status/datasets/riverbend-truncated",
            "document.readyState === 'complete' && !!document.querySelector('h1')",
            "a dataset page",
        )
        expect_text(
            browser.evaluate("document.body.innerText"),
            "the dataset page",
            ["riverbend-truncated", "Stage records", "Could not parse"],
        )
        shots.append(browser.screenshot(OUT / "dataset-detail.png", full_page=True))

        browser.open(
            f"{base}/dags", "document.body && document.body.innerText.includes('iati_refresh')", "the DAG list"
        )
        expect_text(browser.evaluate("document.body.innerText"), "the DAG list", ["iati_refresh"])
        shots.append(browser.screenshot(OUT / "dags.png"))
        if "IATI datasets" not in menu and "Browse" not in menu:
            log("note: the UI navigation text did not mention Browse / IATI datasets")
    except CheckFailed as exc:
        print(f"ui-check: FAILED: {exc}", file=sys.stderr)
        if browser is not None:
            with contextlib.suppress(Exception):
                shots.append(browser.screenshot(OUT / "failure.png"))
        for shot in shots:
            print(shot)
        return 1
    finally:
        if browser is not None:
            browser.close()
        stop(server)
        if not args.keep:
            with contextlib.suppress(Exception):
                drop_database()
    log("screenshots:")
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
