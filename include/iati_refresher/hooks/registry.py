"""The IATI registry as an Airflow hook (connection ``iati_registry``, type ``iati_registry``).

The host is the registry's base URL: the IATI Bulk Data Service
(``https://bulk-data.iatistandard.org``), or the CKAN IATI Registry with
``REFRESHER_REGISTRY_SOURCE=ckan``.  Extras may override the BDS index paths
(``dataset_index_path``, ``reporting_org_index_path``).  Without the connection the
pipeline reads the public Bulk Data Service (``REFRESHER_BDS_URL``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher import connections
from iati_refresher.connections import ConnectionInfo
from iati_refresher.registry.base import RegistrySource
from iati_refresher.registry.sources import build_source
from iati_refresher.settings import Settings, get_settings


class IatiRegistryHook(BaseHook):
    """The IATI registry (Bulk Data Service or CKAN Registry) behind a connection.

    :param iati_registry_conn_id: the connection id (default ``iati_registry``).
    :param settings: package settings; ``get_settings()`` by default.
    """

    conn_name_attr = "iati_registry_conn_id"
    default_conn_name = connections.REGISTRY
    conn_type = "iati_registry"
    hook_name = "IATI Registry (Bulk Data Service or CKAN)"

    def __init__(self, iati_registry_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.iati_registry_conn_id = iati_registry_conn_id
        self.settings = settings or get_settings()

    def get_conn(self) -> RegistrySource:
        """The registry source for ``settings.registry_source`` at the connection's base URL."""
        info = ConnectionInfo.of(self.iati_registry_conn_id, self.get_connection(self.iati_registry_conn_id))
        return build_source(self.settings, info.base_url(default_scheme="https"), extra=info.extra)

    def test_connection(self) -> tuple[bool, str]:
        """Read the registry's index heads (the UI's Test button)."""
        try:
            described = self.get_conn().check()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, described
