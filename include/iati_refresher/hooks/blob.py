"""Blob storage through the Azure provider's ``WasbHook`` (connection ``refresher_blob``, type ``wasb``).

The connection form, its Test button and every way to authenticate (connection string,
account key, SAS token, service principal, managed or workload identity) are the Azure
provider's.  :class:`RefresherWasbHook` adds only what the pipeline needs around it: the
connection the task already resolved (stage worker processes get it handed over), and the
client options of :class:`iati_refresher.storage.BlobStoreConfig` (quick retries, timeouts).
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

from iati_refresher.connections import BLOB_STORAGE, ConnectionInfo, get_connection
from iati_refresher.settings import Settings, get_settings
from iati_refresher.storage import AzureBlobStore, BlobStoreConfig


class RefresherWasbHook(WasbHook):
    """``WasbHook`` for the refresher's blob storage.

    :param wasb_conn_id: the connection id (default ``refresher_blob``).
    :param connection: the connection, already looked up (else Airflow looks it up).
    :param client_options: keyword arguments for ``BlobServiceClient`` that the connection's
        extras do not set (the extras win, as they do in WasbHook).
    """

    default_conn_name = BLOB_STORAGE

    def __init__(
        self,
        wasb_conn_id: str = BLOB_STORAGE,
        *,
        connection: ConnectionInfo | None = None,
        client_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(wasb_conn_id=wasb_conn_id, **kwargs)
        self._resolved = connection
        self._client_options = dict(client_options or {})

    def get_connection(self, conn_id: str) -> Any:  # type: ignore[override]
        from airflow.sdk import Connection

        if self._resolved is not None:
            info = self._resolved
            conn = Connection(
                conn_id=conn_id,
                conn_type=info.conn_type or "wasb",
                host=info.host or None,
                login=info.login or None,
                password=info.password or None,
                schema=info.schema or None,
                port=info.port,
                extra=json.dumps(info.extra),
            )
        else:
            conn = super().get_connection(conn_id)
        extra = {**self._client_options, **(conn.extra_dejson or {})}
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

    def get_store(self, settings: Settings | None = None) -> AzureBlobStore:
        """The refresher's blob store on this connection."""
        settings = settings or get_settings()
        info = self._resolved or get_connection(self.conn_id)
        config = BlobStoreConfig(
            backend="azure",
            connection=info,
            retry_total=settings.blob_retry_total,
            retry_backoff_s=settings.blob_retry_backoff_s,
        )
        self._client_options = {**config.client_options(), **self._client_options}
        return AzureBlobStore(service=self.get_conn())
