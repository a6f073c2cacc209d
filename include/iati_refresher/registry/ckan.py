"""The old IATI Registry (CKAN API) as a registry source.

Datasets come from ``package_search`` pages (``rows`` = ``settings.ckan_page_size``,
``start`` = packages read so far), publishers from ``organization_list`` with
``all_fields=true`` pages, falling back to ``organization_list`` names plus one
``organization_show`` per name on registries that do not support it.  Every request
carries the refresher's User-Agent and waits ``settings.ckan_request_interval_s`` after the
previous one, to be polite to a shared service.

CKAN has no ETag for the whole registry, so :meth:`CkanRegistrySource.fetch` always
returns a snapshot.  A listing that cannot be read completely raises
:class:`RegistryUnavailable`: a partial list would make the sync delete every dataset it
happened to miss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from iati_refresher.registry.base import (
    RegistrySnapshot,
    RegistryUnavailable,
    checked_hash,
    dataset_record,
    finish_snapshot,
    first_missing,
    get_json,
    map_records,
    text,
)
from iati_refresher.settings import Settings

SOURCE = "ckan"
API_PATH = "/api/3/action/"
EXTRA_PAGES = 5  # tolerance over the announced count before paging is declared runaway


class CkanRegistrySource:
    """Reads packages and organisations from a CKAN registry (iatiregistry.org).

    :param base_url: the registry root (``https://iatiregistry.org``) or its API root.
    :param client: an ``httpx.Client`` from :func:`iati_refresher.net.http_client`.
    :param settings: page size, request interval, address policy, size cap.
    :param sleep: injected for tests; ``time.sleep`` by default.
    :param clock: injected for tests; ``time.monotonic`` by default.
    :param owns_client: close ``client`` in :meth:`close`.
    """

    source = SOURCE

    def __init__(
        self,
        base_url: str,
        client: httpx.Client,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        owns_client: bool = False,
    ):
        root = base_url.rstrip("/")
        if root.endswith(API_PATH.rstrip("/")):
            root = root[: -len(API_PATH.rstrip("/"))]
        self.api_url = root + API_PATH
        self.client = client
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._last_request: float | None = None
        self._owns_client = owns_client

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    # --- requests --------------------------------------------------------------------------

    def _call(self, action: str, params: dict[str, Any]) -> Any:
        """One API call at the polite rate; the ``result`` of a successful CKAN response."""
        if self._last_request is not None:
            wait = self._last_request + self.settings.ckan_request_interval_s - self._clock()
            if wait > 0:
                self._sleep(wait)
        try:
            _, body = get_json(self.client, self.api_url + action, self.settings, params=params)
        finally:
            self._last_request = self._clock()
        if not isinstance(body, dict) or body.get("success") is not True or "result" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            raise RegistryUnavailable(f"CKAN {action} failed: {error or 'not a CKAN API response'}")
        return body["result"]

    def check(self) -> str:
        """One cheap call (``package_search`` for no rows) to say the registry answers."""
        result = self._call("package_search", {"rows": 0})
        count = result.get("count") if isinstance(result, dict) else None
        return f"CKAN registry at {self.api_url}: {count} datasets listed"

    # --- datasets --------------------------------------------------------------------------

    def _packages(self) -> list[Any]:
        rows = max(1, self.settings.ckan_page_size)
        packages: list[Any] = []
        seen: set[str] = set()
        count: int | None = None
        max_pages: int | None = None
        page = 0
        while count is None or len(packages) < count:
            result = self._call(
                "package_search",
                # Oldest first, so packages created while paging land on later pages.
                {"rows": rows, "start": len(packages), "sort": "metadata_created asc"},
            )
            if not isinstance(result, dict) or not isinstance(result.get("results"), list):
                raise RegistryUnavailable("CKAN package_search returned no result list")
            announced = result.get("count")
            if not isinstance(announced, int) or isinstance(announced, bool) or announced < 0:
                raise RegistryUnavailable(f"CKAN package_search returned a malformed count {announced!r}")
            count = announced
            if max_pages is None:
                max_pages = math.ceil(count / rows) + EXTRA_PAGES
            new = 0
            for package in result["results"]:
                key = package.get("id") if isinstance(package, dict) else None
                if isinstance(key, str) and key in seen:
                    continue  # shifted onto this page by a deletion: already read
                if isinstance(key, str):
                    seen.add(key)
                packages.append(package)
                new += 1
            page += 1
            if new == 0 or page >= max_pages:
                break
        if count is not None and len(packages) < count:
            raise RegistryUnavailable(
                f"CKAN package_search announced {count} packages but only {len(packages)} could be read"
            )
        return packages

    # --- publishers -------------------------------------------------------------------------

    def _organisations(self) -> list[Any]:
        try:
            return self._organisations_all_fields()
        except RegistryUnavailable:
            return [self._call("organization_show", {"id": name}) for name in self._organisation_names()]

    def _paged_list(self, params: dict[str, Any]) -> list[Any]:
        limit = max(1, self.settings.ckan_page_size)
        items: list[Any] = []
        for _ in range(100_000):  # runaway guard: a registry never has this many pages
            result = self._call("organization_list", {**params, "limit": limit, "offset": len(items)})
            if not isinstance(result, list):
                raise RegistryUnavailable("CKAN organization_list returned no list")
            if not result:
                return items
            items.extend(result)
        raise RegistryUnavailable("CKAN organization_list never ended")

    def _organisations_all_fields(self) -> list[Any]:
        orgs = self._paged_list({"all_fields": "true", "include_extras": "true"})
        if any(not isinstance(org, dict) for org in orgs):
            raise RegistryUnavailable("organization_list ignored all_fields")
        return orgs

    def _organisation_names(self) -> list[str]:
        names = self._paged_list({})
        return [name for name in names if isinstance(name, str) and name]

    # --- the snapshot -----------------------------------------------------------------------

    def fetch(self, previous_etag: str | None = None) -> RegistrySnapshot:
        """Read every organisation and package (``previous_etag`` is ignored: CKAN has none).

        :raises RegistryUnavailable: an API call failed or a listing was incomplete.
        """
        self._last_request = None
        rejected: list[dict[str, Any]] = []
        publishers = map_records(((raw, map_organisation(raw)) for raw in self._organisations()), "publisher", rejected)
        datasets = map_records(((raw, map_package(raw)) for raw in self._packages()), "dataset", rejected)
        return finish_snapshot(publishers, datasets, rejected, index_created=None, etag=None, source=SOURCE)


def _extras(raw: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields plus CKAN's ``extras: [{key, value}]``, top level winning."""
    merged: dict[str, Any] = {}
    extras = raw.get("extras")
    if isinstance(extras, list):
        for item in extras:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                merged[item["key"]] = item.get("value")
    merged.update(raw)
    return merged


def map_organisation(raw: Any) -> dict[str, Any] | str:
    """A CKAN organisation (ckanext-iati publisher) as a publisher record, or the reason it is unusable."""
    if not isinstance(raw, dict):
        return "not an object"
    fields = _extras(raw)
    org_id = text(fields.get("id"))
    name = text(fields.get("name"))
    missing = first_missing({"id": org_id, "name": name})
    if missing:
        return missing
    pub: dict[str, Any] = {
        "org_id": org_id,
        "name": name,
        "title": text(fields.get("title")) or text(fields.get("display_name")) or name,
        "package_count": 0,
        "iati_id": text(fields.get("publisher_iati_id")),
    }
    optional = {
        "description": text(fields.get("publisher_description")) or text(fields.get("description")),
        "state": text(fields.get("state")),
        "image_url": text(fields.get("image_url")),
        "country_code": text(fields.get("publisher_country")),
    }
    pub.update({key: value for key, value in optional.items() if value})
    return pub


def map_package(raw: Any) -> dict[str, Any] | str:
    """A CKAN package as a dataset record, or the reason it is unusable.

    The document id is the package id, the hash and both URLs come from the package's
    (single) resource, the publisher is ``owner_org``.
    """
    if not isinstance(raw, dict):
        return "not an object"
    dataset_id = text(raw.get("id"))
    name = text(raw.get("name"))
    publisher = text(raw.get("owner_org"))
    missing = first_missing({"id": dataset_id, "name": name, "owner_org": publisher})
    if missing:
        return missing
    resources = raw.get("resources")
    if not isinstance(resources, list) or not resources or not isinstance(resources[0], dict):
        return "no resource"
    resource = resources[0]
    url = text(resource.get("url"))
    if not url:
        return "the resource has no url"
    hash_ = checked_hash(resource.get("hash"))
    if hash_ is None:
        return f"malformed resource hash {resource.get('hash')!r}"
    return dataset_record(dataset_id, name, hash_, url, publisher, url)
