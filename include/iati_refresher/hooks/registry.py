"""The registry source as an Airflow hook (provider shape).

:func:`registry_for` (defined in :mod:`iati_refresher.registry.base`, so the CLI and
worker processes can use it without importing Airflow) is what the pipeline calls: it reads
the ``iati_registry`` connection through :func:`iati_refresher.connections.get_connection`
and falls back to ``settings.bds_url`` / ``settings.ckan_url``.  :class:`IatiRegistryHook`
builds the same source from an Airflow connection, and describes the connection form.

``settings.registry_source`` chooses the kind of registry: ``bds`` or ``ckan``.  A
connection's ``extra`` may override the BDS index paths (``dataset_index_path``,
``reporting_org_index_path``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher import connections
from iati_refresher.connections import ConnectionInfo
from iati_refresher.registry.base import RegistrySource, build_source, registry_for
from iati_refresher.settings import Settings, get_settings

__all__ = ["IatiRegistryHook", "build_source", "registry_for"]


class IatiRegistryHook(BaseHook):
    """The IATI registry (Bulk Data Service or CKAN Registry) behind an HTTP connection.

    :param iati_registry_conn_id: the connection id (default ``iati_registry``); its host is
        the registry's base URL (``https://bulk-data.iatistandard.org``).
    :param settings: package settings; ``get_settings()`` by default.
    """

    conn_name_attr = "iati_registry_conn_id"
    default_conn_name = connections.REGISTRY
    conn_type = "http"
    hook_name = "IATI Registry (Bulk Data Service or CKAN)"

    def __init__(self, iati_registry_conn_id: str = default_conn_name, settings: Settings | None = None):
        super().__init__()
        self.iati_registry_conn_id = iati_registry_conn_id
        self.settings = settings or get_settings()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login", "password", "port", "schema"],
            "relabeling": {"host": "Registry base URL"},
            "placeholders": {
                "host": "https://bulk-data.iatistandard.org",
                "extra": '{"dataset_index_path": "/datasets-minimal", "reporting_org_index_path": "/reporting-orgs"}',
            },
        }

    def get_conn(self) -> RegistrySource:
        """The registry source for ``settings.registry_source`` at the connection's base URL."""
        info = ConnectionInfo.of(self.iati_registry_conn_id, self.get_connection(self.iati_registry_conn_id))
        return build_source(self.settings, info.base_url(default_scheme="https"), extra=info.extra)
