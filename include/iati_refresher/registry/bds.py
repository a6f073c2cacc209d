"""The IATI Bulk Data Service (BDS) indices as a registry source.

The BDS publishes two JSON indices from each of its runs: the minimal dataset index
(``/datasets-minimal``) and the reporting-org index (``/reporting-orgs``), both carrying the
run's ``index_created_unix_timestamp``.  A fetch is:

1. a conditional GET of the dataset index (``If-None-Match`` with the previous ETag):
   ``304`` or an unchanged ETag means nothing to do (``None``);
2. a GET of the reporting-org index;
3. both must come from the same run, else :class:`RegistryInconsistent`.

Unlike the reference, the HTTP status is checked (a 5xx page is not parsed as an index),
and a missing ETag is not fatal: the snapshot then has ``etag=None`` and every poll syncs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx

from iati_refresher.registry.base import (
    RegistryInconsistent,
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

SOURCE = "bds"


class BulkDataServiceSource:
    """Reads the BDS dataset and reporting-org indices.

    :param base_url: the service root, e.g. ``https://bulk-data.iatistandard.org``.
    :param dataset_index_path: path of the minimal dataset index (``/datasets-minimal``).
    :param reporting_org_index_path: path of the reporting-org index (``/reporting-orgs``).
    :param client: an ``httpx.Client`` from :func:`iati_refresher.net.http_client`.
    :param settings: the package settings (address policy, size cap).
    :param owns_client: close ``client`` in :meth:`close`.
    """

    source = SOURCE

    def __init__(
        self,
        base_url: str,
        dataset_index_path: str,
        reporting_org_index_path: str,
        client: httpx.Client,
        settings: Settings,
        *,
        owns_client: bool = False,
    ):
        root = base_url.rstrip("/") + "/"
        self.dataset_index_url = urljoin(root, dataset_index_path.lstrip("/"))
        self.reporting_org_index_url = urljoin(root, reporting_org_index_path.lstrip("/"))
        self.client = client
        self.settings = settings
        self._owns_client = owns_client

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def check(self) -> str:
        """One cheap request (HEAD of the dataset index) to say the service answers."""
        response = self.client.head(self.dataset_index_url)
        if response.status_code >= 400:
            raise RegistryUnavailable(
                f"the dataset index answered HTTP {response.status_code}: {self.dataset_index_url}"
            )
        return (
            f"Bulk Data Service dataset index at {self.dataset_index_url}: HTTP {response.status_code}, "
            f"ETag {response.headers.get('etag') or 'none'}"
        )

    def fetch(self, previous_etag: str | None = None) -> RegistrySnapshot | None:
        """Read both indices, or return ``None`` when the dataset index's ETag is unchanged.

        :raises RegistryUnavailable: an index could not be read or is not an index.
        :raises RegistryInconsistent: the two indices come from different BDS runs.
        """
        headers = {"If-None-Match": previous_etag} if previous_etag else None
        response, datasets_index = get_json(
            self.client, self.dataset_index_url, self.settings, headers=headers, accept_not_modified=True
        )
        etag = response.headers.get("etag") or None
        if datasets_index is None or (previous_etag and etag == previous_etag):
            return None
        _, orgs_index = get_json(self.client, self.reporting_org_index_url, self.settings)
        return snapshot_from_indices(datasets_index, orgs_index, etag=etag)


def _index_timestamp(index: Any, url_name: str) -> int | None:
    value = index.get("index_created_unix_timestamp")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RegistryUnavailable(f"the {url_name} has a malformed index_created_unix_timestamp: {value!r}")
    try:
        return int(value)
    except ValueError as exc:
        raise RegistryUnavailable(f"the {url_name} has a malformed index_created_unix_timestamp: {value!r}") from exc


def snapshot_from_indices(datasets_index: Any, orgs_index: Any, *, etag: str | None = None) -> RegistrySnapshot:
    """Map a parsed dataset index and reporting-org index to a snapshot.

    :raises RegistryUnavailable: an index does not have the BDS shape.
    :raises RegistryInconsistent: the indices come from different BDS runs.
    """
    if not isinstance(datasets_index, dict) or not isinstance(datasets_index.get("datasets"), list | dict):
        raise RegistryUnavailable("the dataset index has no 'datasets' list")
    if not isinstance(orgs_index, dict) or not isinstance(orgs_index.get("reporting_orgs"), list):
        raise RegistryUnavailable("the reporting-org index has no 'reporting_orgs' list")
    created = _index_timestamp(datasets_index, "dataset index")
    orgs_created = _index_timestamp(orgs_index, "reporting-org index")
    if created != orgs_created:
        raise RegistryInconsistent(
            f"the dataset index (index_created_unix_timestamp {created}) and the reporting-org index "
            f"({orgs_created}) come from different Bulk Data Service runs",
            etag=etag,
        )
    rejected: list[dict[str, Any]] = []
    publishers = map_records(
        ((raw, map_reporting_org(raw)) for raw in orgs_index["reporting_orgs"]), "publisher", rejected
    )
    raw_datasets = datasets_index["datasets"]
    # Older BDS versions keyed the datasets by short name instead of listing them.
    entries = (
        [(key, value) for key, value in raw_datasets.items()]
        if isinstance(raw_datasets, dict)
        else [(None, value) for value in raw_datasets]
    )
    datasets = map_records(((raw, map_dataset(raw, key=key)) for key, raw in entries), "dataset", rejected)
    return finish_snapshot(publishers, datasets, rejected, index_created=created, etag=etag, source=SOURCE)


def map_reporting_org(raw: Any) -> dict[str, Any] | str:
    """A reporting-org index entry as a publisher record, or the reason it is unusable."""
    if not isinstance(raw, dict):
        return "not an object"
    org_id = text(raw.get("id"))
    name = text(raw.get("short_name"))
    missing = first_missing({"id": org_id, "short_name": name})
    if missing:
        return missing
    pub: dict[str, Any] = {
        "org_id": org_id,
        "name": name,
        # title is required in the publisher table: fall back to the short name.
        "title": text(raw.get("human_readable_name")) or name,
        "package_count": 0,
        "iati_id": text(raw.get("iati_identifier")) or text(raw.get("organisation_identifier")),
    }
    if text(raw.get("description")):
        pub["description"] = text(raw.get("description"))
    if text(raw.get("hq_country")):
        pub["country_code"] = text(raw.get("hq_country"))
    return pub


def map_dataset(raw: Any, *, key: str | None = None) -> dict[str, Any] | str:
    """A dataset index entry as a dataset record, or the reason it is unusable.

    ``hash`` is ``last_known_good_dataset.hash_excluding_generated_timestamp`` (``""`` when the
    BDS never had a good copy), ``cached_dataset_url`` its ``cached_dataset_url_xml`` (newer:
    ``cached_dataset_xml_url``), ``url`` the ``source_url``, ``publisher`` the
    ``reporting_org_id``.
    """
    if not isinstance(raw, dict):
        return "not an object"
    dataset_id = text(raw.get("id"))
    publisher = text(raw.get("reporting_org_id"))
    name = text(raw.get("short_name")) or text(key)
    url = text(raw.get("source_url"))
    missing = first_missing({"id": dataset_id, "reporting_org_id": publisher, "short_name": name, "source_url": url})
    if missing:
        return missing
    good = raw.get("last_known_good_dataset")
    if good is None:
        good = {}
    if not isinstance(good, dict):
        return "last_known_good_dataset is not an object"
    hash_ = checked_hash(good.get("hash_excluding_generated_timestamp"))
    if hash_ is None:
        return f"malformed hash_excluding_generated_timestamp {good.get('hash_excluding_generated_timestamp')!r}"
    cached = text(good.get("cached_dataset_url_xml")) or text(good.get("cached_dataset_xml_url"))
    return dataset_record(dataset_id, name, hash_, url, publisher, cached)
