"""Solr for the IATI datastore as an Airflow hook (connection ``solr``, type ``iati_solr``).

The host is Solr's base URL (``http://solr:8983/solr``); login and password, when given,
are basic auth.  The client writes through the ``*_solrize`` aliases of the ``activity``,
``transaction`` and ``budget`` collections (names in the settings).  Connections of type
``http`` made for earlier versions work the same.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher.connections import SOLR, ConnectionInfo
from iati_refresher.settings import Settings, get_settings
from iati_refresher.solr_client import SolrClient, client_from_connection


class SolrHook(BaseHook):
    """Solr for the IATI Refresher (``get_conn()`` returns the plain client).

    :param solr_conn_id: the Airflow connection id (default ``solr``).
    :param settings: tunables (timeouts, collection names); the environment's by default.
    """

    conn_name_attr = "solr_conn_id"
    default_conn_name = SOLR
    conn_type = "iati_solr"
    hook_name = "Solr (IATI datastore)"

    def __init__(self, solr_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.solr_conn_id = solr_conn_id
        self.settings = settings or get_settings()

    def connection_info(self) -> ConnectionInfo:
        return ConnectionInfo.of(self.solr_conn_id, self.get_connection(self.solr_conn_id))

    def get_conn(self) -> SolrClient:
        """A new client for the connection (the caller closes it)."""
        return client_from_connection(self.connection_info(), self.settings)

    def test_connection(self) -> tuple[bool, str]:
        """Ping the three write targets (the UI's Test button)."""
        try:
            with self.get_conn() as client:
                for role in client.collections:
                    client.ping(role)
                targets = ", ".join(client.target(role) for role in client.collections)
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"Solr answered the ping of {targets}"
