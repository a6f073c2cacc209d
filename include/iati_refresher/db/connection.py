"""Open connections to the refresher database (PostgreSQL, psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import DictRow, dict_row

from iati_refresher.connections import REFRESHER_DB, ConnectionInfo, get_connection


class DatabaseNotConfigured(RuntimeError):
    pass


def conninfo_for(conn: ConnectionInfo) -> str:
    """A libpq conninfo string for an Airflow postgres connection."""
    parts = {
        "host": conn.host or "127.0.0.1",
        "port": str(conn.port or 5432),
        "dbname": conn.schema or "refresher",
        "user": conn.login or "postgres",
        "connect_timeout": str(conn.extra.get("connect_timeout", 10)),
        "keepalives": "1",
        "keepalives_idle": "60",
        "keepalives_interval": "15",
        "keepalives_count": "5",
        "application_name": "iati-refresher",
    }
    if conn.password:
        parts["password"] = conn.password
    if conn.extra.get("sslmode"):
        parts["sslmode"] = str(conn.extra["sslmode"])
    return psycopg.conninfo.make_conninfo(**parts)


def resolve_conninfo(conn_id: str = REFRESHER_DB) -> str:
    conn = get_connection(conn_id)
    if conn is None:
        raise DatabaseNotConfigured(
            f"no connection {conn_id!r}: set AIRFLOW_CONN_{conn_id.upper()}=postgresql://user:pass@host:5432/db"
        )
    return conninfo_for(conn)


def connect(conninfo: str) -> psycopg.Connection[DictRow]:
    """A connection with dict rows and UTC session time (all our timestamps are naive UTC)."""
    conn = psycopg.connect(conninfo, row_factory=dict_row, autocommit=False)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


@contextmanager
def connection(conninfo: str) -> Iterator[psycopg.Connection[DictRow]]:
    conn = connect(conninfo)
    try:
        yield conn
    finally:
        conn.close()
