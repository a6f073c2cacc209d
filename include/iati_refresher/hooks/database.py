"""The refresher database through the postgres provider's ``PostgresHook`` (connection ``refresher_db``).

The connection form, its Test button, every libpq extra and the token logins (AWS IAM,
Azure Entra ID) are the provider's; this hook adds the client defaults of
:data:`iati_refresher.db.connection.CLIENT_DEFAULTS` (keep-alives, a connect timeout, our
application name) where the connection's extras do not set them, and takes a connection
already resolved by the task.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from iati_refresher.connections import REFRESHER_DB, ConnectionInfo


class RefresherDatabaseHook(PostgresHook):
    default_conn_name = REFRESHER_DB

    def __init__(
        self, postgres_conn_id: str = REFRESHER_DB, *, connection: ConnectionInfo | None = None, **kwargs: Any
    ):
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self._resolved = connection

    def get_connection(self, conn_id: str) -> Any:  # type: ignore[override]
        from airflow.sdk import Connection

        from iati_refresher.db.connection import CLIENT_DEFAULTS

        if self._resolved is not None:
            info = self._resolved
            conn = Connection(
                conn_id=conn_id,
                conn_type="postgres",
                host=info.host or None,
                login=info.login or None,
                password=info.password or None,
                schema=info.schema or None,
                port=info.port,
                extra=json.dumps(info.extra),
            )
        else:
            conn = super().get_connection(conn_id)
        extra = {**CLIENT_DEFAULTS, **(conn.extra_dejson or {})}
        return Connection(
            conn_id=conn.conn_id,
            conn_type=conn.conn_type,
            host=conn.host,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            port=conn.port,
            extra=json.dumps(extra),
        )
