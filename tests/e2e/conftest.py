"""End-to-end fixtures: the real DAGs through ``dag.test()`` against real PostgreSQL,
Azurite or a local blob directory, and loopback stand-ins for what cannot run here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import services

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="session")
def airflow_metadata() -> None:
    """A fresh Airflow metadata database (SQLite in the session's AIRFLOW_HOME) with our pools."""
    from airflow.utils import db

    from iati_refresher.airflow_setup import ensure_pools

    db.resetdb()
    ensure_pools()


@pytest.fixture(scope="session")
def dagbag(airflow_metadata):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


@pytest.fixture
def refresher_env(pg_dbname: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Connections and settings for one pipeline under test (env vars, as a deployment would)."""
    env = {
        "AIRFLOW_CONN_REFRESHER_DB": services.airflow_uri(pg_dbname),
        "REFRESHER_LOCAL_BLOB_DIR": str(tmp_path / "blobs"),
        "REFRESHER_ALLOW_PRIVATE_ADDRESSES": "true",  # every stand-in listens on loopback
        "REFRESHER_PROCESS_POOL_SIZE": "2",
        "REFRESHER_BATCH_SIZE": "3",
        "REFRESHER_RETRY_BASE_DELAY_S": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def run_dag(dagbag) -> Callable[..., Any]:
    """Run a DAG once through ``dag.test()``; returns (dag_run, {task_id[map_index]: state})."""
    from tests.e2e.world import run_dag

    def run(dag_id: str, conf: dict[str, Any] | None = None):
        dag_run, states, _ = run_dag(dagbag, dag_id, conf, quick=False)
        return dag_run, states

    return run


@pytest.fixture(scope="module")
def reference(pg_template, azurite, dagbag):
    """The digest of one fault-free run of the corpus (its own database, containers and Solr)."""
    from tests.e2e.world import reference_digest

    return reference_digest(pg_template, azurite, dagbag)


@pytest.fixture
def world(pg_dbname, azurite, monkeypatch):
    """A complete world (tests/e2e/world.py) serving the six-dataset corpus; suites that need
    another world define their own ``world``."""
    from tests.e2e.world import open_world

    with open_world(pg_dbname[-12:].replace("_", "-"), pg_dbname, azurite, monkeypatch) as w:
        w.publish_corpus()
        yield w
