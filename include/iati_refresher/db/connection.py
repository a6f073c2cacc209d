"""Open connections to the refresher database (PostgreSQL, psycopg 3).

In Airflow's processes (tasks, the API server's status page) a connection is opened through
the postgres provider's ``PostgresHook``: every extra of the ``refresher_db`` connection
reaches libpq (``sslmode``, ``options``, ``target_session_attrs``, ``sslrootcert``…) and the
hook's token logins work (AWS IAM with ``iam``, Azure Entra ID with ``azure_conn_id``).
The CLI (no Airflow import) builds a libpq conninfo from the same connection, passing the
same extras.  Either way: dict rows, UTC session time, keep-alives, and our application
name unless the connection sets its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from iati_refresher.connections import REFRESHER_DB, ConnectionInfo, get_connection

#: What every refresher connection gets unless the connection's extras say otherwise.
CLIENT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 60,
    "keepalives_interval": 15,
    "keepalives_count": 5,
    "application_name": "iati-refresher",
}
#: Extras PostgresHook reads itself rather than passing to libpq.
HOOK_ONLY_EXTRAS = {
    "iam",
    "redshift",
    "redshift-serverless",
    "cursor",
    "cluster-identifier",
    "workgroup-name",
    "aws_conn_id",
    "sqlalchemy_scheme",
    "sqlalchemy_query",
    "azure_conn_id",
}
#: Set by the CLI: open connections without importing Airflow.
LIGHT_CLIENTS = [False]


class DatabaseNotConfigured(RuntimeError):
    pass


def _require(conn_id: str) -> ConnectionInfo:
    conn = get_connection(conn_id)
    if conn is None:
        raise DatabaseNotConfigured(
            f"no connection {conn_id!r}: set AIRFLOW_CONN_{conn_id.upper()}=postgresql://user:pass@host:5432/db"
        )
    return conn


def conninfo_for(conn: ConnectionInfo) -> str:
    """A libpq conninfo string for an Airflow postgres connection: every extra libpq takes."""
    parts: dict[str, Any] = {
        "host": conn.host or "127.0.0.1",
        "port": str(conn.port or 5432),
        "dbname": conn.schema or "refresher",
        "user": conn.login or "postgres",
        **CLIENT_DEFAULTS,
        **{k: v for k, v in conn.extra.items() if k not in HOOK_ONLY_EXTRAS},
    }
    if conn.password:
        parts["password"] = conn.password
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def resolve_conninfo(conn_id: str = REFRESHER_DB) -> str:
    return conninfo_for(_require(conn_id))


def _prepare(conn: psycopg.Connection[Any]) -> psycopg.Connection[DictRow]:
    conn.row_factory = dict_row  # type: ignore[assignment]
    conn.autocommit = False
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn  # type: ignore[return-value]


def connect(conninfo: str) -> psycopg.Connection[DictRow]:
    """A connection with dict rows and UTC session time (all our timestamps are naive UTC)."""
    return _prepare(psycopg.connect(conninfo))


def open_refresher_db(conn_id: str = REFRESHER_DB) -> psycopg.Connection[DictRow]:
    """A new connection to the refresher database (through PostgresHook in Airflow's processes)."""
    info = _require(conn_id)
    if LIGHT_CLIENTS[0]:
        return connect(conninfo_for(info))
    from iati_refresher.hooks.database import RefresherDatabaseHook

    return _prepare(RefresherDatabaseHook(conn_id, connection=info).get_conn())  # type: ignore[arg-type]


def connector(conn_id: str = REFRESHER_DB) -> Callable[[], psycopg.Connection[DictRow]]:
    """A function that opens a new connection each time (for threads that need their own)."""
    return lambda: open_refresher_db(conn_id)


@contextmanager
def connection(conninfo: str | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """A connection for a block: to ``conninfo``, or to the refresher database."""
    conn = connect(conninfo) if conninfo else open_refresher_db()
    try:
        yield conn
    finally:
        conn.close()
