"""Blob storage hook: Azure Blob Storage (connection ``refresher_blob``) or a local directory.

With no ``refresher_blob`` connection the pipeline uses the local directory
``settings.local_blob_dir`` (the embedded default).  The connection is a ``wasb``
connection: a ``connection_string`` in its extra (Azurite works), or the account name as
login, the account key as password and the blob endpoint URL as host.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher.connections import BLOB_STORAGE, get_connection
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobStore, blob_config_from, open_blob_store


class BlobStorageHook(BaseHook):
    """Open the refresher's blob storage from an Airflow ``wasb`` connection.

    :param blob_conn_id: the connection id (default ``refresher_blob``); when it does not
        exist the local directory backend is used.
    """

    conn_name_attr = "blob_conn_id"
    default_conn_name = BLOB_STORAGE
    conn_type = "wasb"
    hook_name = "IATI Refresher blob storage"

    def __init__(self, blob_conn_id: str = BLOB_STORAGE, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.blob_conn_id = blob_conn_id
        self.settings = settings or Settings.from_env()

    def get_conn(self) -> BlobStore:
        return open_blob_store(blob_config_from(get_connection(self.blob_conn_id), self.settings))

    def test_connection(self) -> tuple[bool, str]:
        try:
            store = self.get_conn()
            list(store.list(self.settings.source_container, "__probe__"))
            return True, "blob storage reachable"
        except Exception as exc:  # report, never raise, as Airflow's test button expects
            return False, f"{type(exc).__name__}: {exc}"
