"""Test session set-up.

Airflow reads its configuration at import time, so the environment is prepared here,
before any test module imports it: a throw-away AIRFLOW_HOME with a SQLite metadata
database, the project's dags/ folder, no examples.  The refresher's own database is real
PostgreSQL (the session's own cluster, or ``REFRESHER_TEST_PG``): each test gets a fresh,
migrated database cloned from a template migrated once per session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
_HOME = tempfile.mkdtemp(prefix="airflow-test-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# Never let a developer's real connections leak into tests.
# REFRESHER_TEST_PG / REFRESHER_TEST_REDIS choose the test servers (tests/support/services.py).
for _key in list(os.environ):
    if _key.startswith(("AIRFLOW_CONN_", "REFRESHER_")) and not _key.startswith("REFRESHER_TEST_"):
        del os.environ[_key]
os.environ["REFRESHER_LOCAL_BLOB_DIR"] = os.path.join(_HOME, "blobs")
# The tests are embedded runs unless a test says otherwise: a missing connection falls back
# to the local default (tests/unit/test_preflight.py checks the deployment behaviour).
os.environ["REFRESHER_EMBEDDED"] = "true"

from tests.support import services  # noqa: E402


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to the latest migration, used as a template for fast copies."""
    from iati_refresher.db import migrate
    from iati_refresher.db.connection import connection
    from iati_refresher.settings import get_settings

    name = services.create_database()
    try:
        with connection(services.conninfo(name)) as conn:
            migrate.migrate(conn, get_settings().migrations_dir)
        yield name
    finally:
        services.drop_database(name)


@pytest.fixture
def pg_dbname(pg_template: str) -> Iterator[str]:
    """A fresh migrated database for one test."""
    name = services.create_database(template=pg_template)
    try:
        yield name
    finally:
        services.drop_database(name)


@pytest.fixture
def pg_conninfo(pg_dbname: str) -> str:
    return services.conninfo(pg_dbname)


@pytest.fixture
def db(pg_conninfo: str):
    """An open psycopg connection (dict rows, UTC) to a fresh migrated database."""
    from iati_refresher.db.connection import connect

    conn = connect(pg_conninfo)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A fresh database with no schema at all; yields its conninfo."""
    name = services.create_database()
    try:
        yield services.conninfo(name)
    finally:
        services.drop_database(name)


@pytest.fixture(scope="session")
def azurite() -> Iterator[services.Azurite]:
    with services.running_azurite() as az:
        yield az


@pytest.fixture(scope="session")
def solrcloud() -> Iterator[object]:
    """A real SolrCloud (Solr 9.10.1 from Maven Central, ``solr/runner``): embedded ZooKeeper,
    one node, the project's configsets, collections and aliases.  Started once per session."""
    from iati_refresher.local.solr import LocalSolrCloud

    with LocalSolrCloud(nodes=1, heap_mb=512) as cloud:
        yield cloud


# The fixtures that start or need a server (PostgreSQL, Azurite, SolrCloud, the e2e
# environment): a test that uses one, directly or through another fixture, is marked
# ``services`` and left out of the unit tier (`make test-fast`).
SERVICE_FIXTURES = {
    "pg_template",
    "pg_dbname",
    "pg_conninfo",
    "db",
    "empty_db",
    "azurite",
    "solrcloud",
    "refresher_env",
    "airflow_metadata",
    "dagbag",
    "run_dag",
    "world",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
