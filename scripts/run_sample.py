"""`make run`: the whole pipeline once, offline, on embedded defaults.

* refresher database: ``AIRFLOW_CONN_REFRESHER_DB`` if set; else the PostgreSQL on
  127.0.0.1:5432 if one answers (database ``iati_refresher_sample``, recreated on every
  run so the demo always shows the whole journey); else an embedded PostgreSQL (pgserver)
  under ``.run/postgres``;
* blob storage: the local directory ``.run/blobs``, emptied with the sample database
  (unless ``AIRFLOW_CONN_REFRESHER_BLOB``);
* registry: the sample registry the project ships, served on loopback by a
  Bulk-Data-Service-compatible server (unless ``AIRFLOW_CONN_IATI_REGISTRY`` is set);
* validator: the built-in one; Solr: none unless ``AIRFLOW_CONN_SOLR`` is set;
* Airflow: a local ``AIRFLOW_HOME=.airflow`` with a SQLite metadata database; the real
  ``iati_refresh`` DAG runs once through ``dag.test()``, then a per-stage summary prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RUN_DIR = PROJECT / ".run"
AIRFLOW_HOME = PROJECT / ".airflow"
PGSERVER_VERSION = "0.1.4"


def _pg_reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def refresher_database() -> str:
    if os.environ.get("AIRFLOW_CONN_REFRESHER_DB"):
        return os.environ["AIRFLOW_CONN_REFRESHER_DB"]
    import psycopg

    if _pg_reachable():
        admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS iati_refresher_sample WITH (FORCE)")
            conn.execute("CREATE DATABASE iati_refresher_sample")
        shutil.rmtree(RUN_DIR / "blobs", ignore_errors=True)
        print("fresh sample database iati_refresher_sample on 127.0.0.1:5432, blobs in .run/blobs")
        return "postgresql://postgres@127.0.0.1:5432/iati_refresher_sample"
    print("No PostgreSQL on 127.0.0.1:5432: starting an embedded one (pgserver) in .run/postgres")
    try:
        import pgserver
    except ImportError:
        # Only needed on machines without PostgreSQL, so not part of the lock's default set.
        subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "-p", sys.executable,
                        f"pgserver=={PGSERVER_VERSION}"], check=True)
        import pgserver
    server = pgserver.get_server(str(RUN_DIR / "postgres"), cleanup_mode="stop")
    server.psql("SELECT 1")
    with contextlib.suppress(Exception):
        server.psql("DROP DATABASE IF EXISTS iati_refresher_sample;")
    server.psql("CREATE DATABASE iati_refresher_sample;")
    shutil.rmtree(RUN_DIR / "blobs", ignore_errors=True)
    uri = server.get_uri("iati_refresher_sample")
    return uri.replace("postgresql://", "postgresql://", 1)


def main() -> int:
    RUN_DIR.mkdir(exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("AIRFLOW_HOME", str(AIRFLOW_HOME))
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT / "dags")
    os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT / "plugins")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")  # the summary tells the story
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{AIRFLOW_HOME}/airflow.db")
    os.environ.setdefault("REFRESHER_LOCAL_BLOB_DIR", str(RUN_DIR / "blobs"))
    # The sample's partly-invalid file would otherwise wait the 2-hour safety period before
    # its valid activities are kept; the demo shows the whole journey at once.
    os.environ.setdefault("REFRESHER_SAFETY_CHECK_PERIOD_S", "0")
    os.environ["AIRFLOW_CONN_REFRESHER_DB"] = refresher_database()

    server = None
    if not os.environ.get("AIRFLOW_CONN_IATI_REGISTRY"):
        from iati_refresher.sample.server import SampleRegistryServer

        server = SampleRegistryServer("127.0.0.1", 0).start()
        os.environ["AIRFLOW_CONN_IATI_REGISTRY"] = server.url.replace("http://", "http://", 1)
        os.environ["REFRESHER_ALLOW_PRIVATE_ADDRESSES"] = "true"  # the sample server is on loopback
        print(f"sample registry (Bulk Data Service API) at {server.url}")

    from airflow.utils import db as airflow_db

    AIRFLOW_HOME.mkdir(exist_ok=True)
    started = time.monotonic()
    airflow_db.initdb()
    from iati_refresher.airflow_setup import ensure_pools

    ensure_pools()

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags")).dags["iati_refresh"]
    print("running iati_refresh through Airflow (dag.test) ...", flush=True)
    run = dag.test()
    elapsed = time.monotonic() - started

    from iati_refresher import pipeline

    try:
        summary = pipeline.summarise_run(run.run_id, _sync_result(run))
    except pipeline.RunUnhealthy as exc:
        summary = None
        print(f"run unhealthy: {exc}")
    if summary:
        print()
        print(pipeline.format_summary(summary))
    print(f"\niati_refresh run {run.run_id}: {run.state} in {elapsed:.0f} s")
    print(f"blobs: {os.environ['REFRESHER_LOCAL_BLOB_DIR']}")
    print(f"status of one dataset: AIRFLOW_CONN_REFRESHER_DB={os.environ['AIRFLOW_CONN_REFRESHER_DB']} "
          ".venv/bin/refresher status meadowlark-mixed")
    if server is not None:
        server.stop()
    return 0 if str(run.state).endswith("success") else 1


def _sync_result(run) -> dict | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(XComModel.run_id == run.run_id, XComModel.task_id == "sync_registry",
                    XComModel.key == "return_value")
            .first()
        )
        return XComModel.deserialize_value(row) if row else None


if __name__ == "__main__":
    sys.exit(main())
