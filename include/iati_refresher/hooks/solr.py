"""Airflow hook for Solr: builds a :class:`~iati_refresher.solr_client.SolrClient` from a connection.

Connection ``solr`` (type ``http``): *host* is Solr's base URL and may carry a scheme and a
path (``http://solr:8983/solr``); otherwise *host*, *port* and *schema* (the path, e.g.
``solr``) are joined.  *login*/*password* are sent as basic auth.  Write targets come from
the settings (``activity_solrize``, ``transaction_solrize``, ``budget_solrize`` by default).

Code that must not import Airflow (CLI, worker processes) uses :func:`solr_for`, which reads
the same connection through :func:`iati_refresher.connections.get_connection`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher.connections import SOLR, ConnectionInfo
from iati_refresher.settings import Settings, get_settings
from iati_refresher.solr_client import SolrClient, client_from_connection, solr_for

__all__ = ["SolrHook", "solr_for"]


class SolrHook(BaseHook):
    """Solr for the IATI Refresher (provider shape: ``get_conn()`` returns the plain client).

    :param solr_conn_id: the Airflow connection id (default ``solr``).
    :param settings: tunables (timeouts, collection names); the environment's by default.
    """

    conn_name_attr = "solr_conn_id"
    default_conn_name = SOLR
    conn_type = "http"
    hook_name = "Solr (IATI Refresher)"

    def __init__(self, solr_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.solr_conn_id = solr_conn_id
        self.settings = settings or get_settings()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["extra"],
            "relabeling": {"host": "Solr base URL", "schema": "Path (when the host has none)"},
            "placeholders": {
                "host": "http://solr:8983/solr",
                "login": "basic-auth user (optional)",
                "password": "basic-auth password (optional)",
            },
        }

    def connection_info(self) -> ConnectionInfo:
        return ConnectionInfo.of(self.solr_conn_id, self.get_connection(self.solr_conn_id))

    def get_conn(self) -> SolrClient:
        """A new client for the connection (the caller closes it)."""
        return client_from_connection(self.connection_info(), self.settings)

    def test_connection(self) -> tuple[bool, str]:
        """Ping the three write targets (used by the Airflow UI's *Test* button)."""
        try:
            with self.get_conn() as client:
                for role in client.collections:
                    client.ping(role)
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, "Solr answered the ping of every collection"
