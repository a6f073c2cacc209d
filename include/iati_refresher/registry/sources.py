"""Choosing the registry source: the Bulk Data Service or CKAN reader for the configured
registry (:mod:`iati_refresher.registry.base` holds what the sources share; they import it,
this module imports them)."""

from __future__ import annotations

from typing import Any

import httpx

from iati_refresher import connections, net
from iati_refresher.registry.base import RegistrySource
from iati_refresher.registry.bds import BulkDataServiceSource
from iati_refresher.registry.ckan import CkanRegistrySource
from iati_refresher.settings import Settings

SOURCES = ("bds", "ckan")


def build_source(
    settings: Settings,
    base_url: str,
    *,
    extra: dict[str, Any] | None = None,
    client: httpx.Client | None = None,
) -> RegistrySource:
    """The source for ``settings.registry_source`` reading ``base_url``.

    :param client: an HTTP client to use; by default one is made (and closed by the
        source's ``close()``).
    :raises ValueError: ``settings.registry_source`` is neither ``bds`` nor ``ckan``.
    """
    kind = settings.registry_source.strip().lower()
    if kind not in SOURCES:
        raise ValueError(f"registry_source must be one of {', '.join(SOURCES)}, not {settings.registry_source!r}")
    extra = extra or {}
    owns_client = client is None
    http = client if client is not None else net.http_client(settings)

    def field(name: str) -> Any:  # plain, or with the UI's ``extra__iati_registry__`` prefix
        return extra.get(name) or extra.get(f"extra__iati_registry__{name}")

    if kind == "bds":
        return BulkDataServiceSource(
            base_url,
            str(field("dataset_index_path") or settings.bds_dataset_index_path),
            str(field("reporting_org_index_path") or settings.bds_reporting_org_index_path),
            http,
            settings,
            owns_client=owns_client,
        )
    return CkanRegistrySource(base_url, http, settings, owns_client=owns_client)


def registry_for(settings: Settings) -> RegistrySource:
    """The configured registry source: the ``iati_registry`` connection when there is one,
    else ``settings.bds_url`` / ``settings.ckan_url``."""
    conn = connections.get_connection(connections.REGISTRY)
    if conn is not None and conn.host:
        return build_source(settings, conn.base_url(default_scheme="https"), extra=conn.extra)
    default = settings.ckan_url if settings.registry_source.strip().lower() == "ckan" else settings.bds_url
    return build_source(settings, default)
