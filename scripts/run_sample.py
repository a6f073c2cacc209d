"""`make run`: the whole pipeline once, offline, on embedded defaults.

* refresher database: ``AIRFLOW_CONN_REFRESHER_DB`` if set; else the project's own
  PostgreSQL cluster in ``.run/pg`` on 127.0.0.1:``REFRESHER_LOCAL_PG_PORT`` (55432), started
  from the machine's PostgreSQL programs (:mod:`iati_refresher.local.servers`), database
  ``iati_refresher_sample`` recreated on every run so the demo always shows the whole journey;
* blob storage: the local directory ``.run/blobs``, emptied with the sample database
  (unless ``AIRFLOW_CONN_REFRESHER_BLOB``);
* registry: the sample registry the project ships, served on loopback by a
  Bulk-Data-Service-compatible server (unless ``AIRFLOW_CONN_IATI_REGISTRY`` is set);
* validator: the built-in one; Solr: a real SolrCloud started for the run from Solr's own
  Maven artifacts (``solr/runner``) when Java is there, stopped afterwards (the run ends by
  printing what is searchable); ``AIRFLOW_CONN_SOLR`` points it at yours instead;
* Airflow: a local ``AIRFLOW_HOME=.airflow`` with a SQLite metadata database; the real
  ``iati_refresh`` DAG runs once through ``dag.test()``, then a per-stage summary prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RUN_DIR = PROJECT / ".run"
AIRFLOW_HOME = PROJECT / ".airflow"


def refresher_database() -> str:
    """``AIRFLOW_CONN_REFRESHER_DB`` if set; else a fresh sample database on the project's own
    PostgreSQL cluster (``.run/pg``, started when not running, left running for
    ``refresher status``; ``make down`` stops it)."""
    if os.environ.get("AIRFLOW_CONN_REFRESHER_DB"):
        return os.environ["AIRFLOW_CONN_REFRESHER_DB"]
    from iati_refresher.local.servers import LocalPostgres, ServerUnavailable

    port = int(os.environ.get("REFRESHER_LOCAL_PG_PORT") or 55432)
    try:
        server = LocalPostgres(RUN_DIR / "pg", port).start()
    except ServerUnavailable as exc:
        raise SystemExit(f"make run needs PostgreSQL: {exc}") from None
    uri = server.create_database("iati_refresher_sample", fresh=True)
    shutil.rmtree(RUN_DIR / "blobs", ignore_errors=True)
    print(
        f"fresh sample database iati_refresher_sample on the project's PostgreSQL (127.0.0.1:{port}, .run/pg); "
        "blobs in .run/blobs"
    )
    return uri


def main() -> int:
    RUN_DIR.mkdir(exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("AIRFLOW_HOME", str(AIRFLOW_HOME))
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT / "dags")
    os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT / "plugins")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")  # the summary tells the story
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{AIRFLOW_HOME}/airflow.db")
    from iati_refresher.local.embedded import embedded_settings

    for key, value in embedded_settings(RUN_DIR).items():
        os.environ.setdefault(key, value)
    os.environ["AIRFLOW_CONN_REFRESHER_DB"] = refresher_database()

    server = None
    if not os.environ.get("AIRFLOW_CONN_IATI_REGISTRY"):
        from iati_refresher.sample.server import SampleRegistryServer

        server = SampleRegistryServer("127.0.0.1", 0).start()
        os.environ["AIRFLOW_CONN_IATI_REGISTRY"] = server.url
        print(f"sample registry (Bulk Data Service API) at {server.url}")

    solr_cloud = start_local_solr()

    from iati_refresher.local.embedded import describe

    for line in describe(
        dict(os.environ),
        sample_registry=server.url if server else None,
        local_solr=solr_cloud.url if solr_cloud else None,
    ):
        print(line)

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
    print(
        f"status of one dataset: AIRFLOW_CONN_REFRESHER_DB={os.environ['AIRFLOW_CONN_REFRESHER_DB']} "
        ".venv/bin/refresher status meadowlark-mixed"
    )
    print("the project's PostgreSQL (.run/pg) keeps running for that; make down stops it")
    if solr_cloud is not None:
        try:
            print_searchable(solr_cloud.url)
        finally:
            solr_cloud.stop()
    if server is not None:
        server.stop()
    return 0 if str(run.state).endswith("success") else 1


def start_local_solr():
    """A SolrCloud of Solr's own artifacts for this run, unless ``AIRFLOW_CONN_SOLR`` is set or
    there is no Java (then indexing is skipped, and the summary says so)."""
    if os.environ.get("AIRFLOW_CONN_SOLR"):
        return None
    from iati_refresher.local.solr import LocalSolrCloud, SolrUnavailable, java_available

    reason = java_available()
    if reason:
        print(f"Solr: {reason}; indexing is skipped")
        return None
    print("starting SolrCloud (solr/runner, Solr 9.10.1; the first time Maven downloads it) ...", flush=True)
    shutil.rmtree(RUN_DIR / "solr", ignore_errors=True)
    (RUN_DIR / "solr").mkdir(parents=True)
    try:
        cloud = LocalSolrCloud(base_dir=RUN_DIR / "solr").start()
    except SolrUnavailable as exc:
        print(f"Solr did not start ({exc}); indexing is skipped")
        return None
    os.environ["AIRFLOW_CONN_SOLR"] = json.dumps({"conn_type": "iati_solr", "host": cloud.url})
    os.environ.setdefault("REFRESHER_SOLR_COMMIT_WITHIN_MS", "1000")  # searchable right after the run
    print(f"SolrCloud at {cloud.url}")
    return cloud


def print_searchable(url: str) -> None:
    """What a user can now search: documents per collection, and one query's hits."""
    from iati_refresher.solr_client import ROLES, SolrClient

    with SolrClient(url, max_retries=2, timeout_s=30) as solr:
        for role in ROLES:
            solr.commit(role)
        print("\nsearchable in Solr (read aliases): " + ", ".join(f"{role} {solr.count(role)}" for role in ROLES))
        query = "iati_text:water"
        answer = solr.select("activity", query, fl="iati_identifier,title_narrative", rows=5)
        print(f"query {url}/activity/select?q={query}: {answer['response']['numFound']} hits")
        for hit in answer["response"]["docs"]:
            print(f"  {hit['iati_identifier']}: {' / '.join(hit.get('title_narrative') or [])}")


def _sync_result(run) -> dict | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(
                XComModel.run_id == run.run_id, XComModel.task_id == "sync_registry", XComModel.key == "return_value"
            )
            .first()
        )
        return XComModel.deserialize_value(row) if row else None


if __name__ == "__main__":
    sys.exit(main())
