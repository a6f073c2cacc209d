"""What every registry source returns, and the checks shared by the sources.

A source turns a registry (the IATI Bulk Data Service indices, or the old IATI Registry's
CKAN API) into plain records:

* publisher: ``org_id, name, title, package_count, iati_id`` (+ ``description, state,
  image_url, country_code`` when the source has them);
* dataset: ``id, name, hash, url, publisher, cached_dataset_url``.

A malformed record never aborts a fetch: it is returned in ``RegistrySnapshot.rejected``
with the reason, so the sync can record it and carry on with the rest.  Records that come
back are ready to store: required text present, hashes well formed, every dataset's
publisher present among the publishers, no duplicate ids.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from iati_refresher import net
from iati_refresher.settings import Settings

SHA1_HEX = re.compile(r"^[0-9a-fA-F]{40}$")


class RegistryError(RuntimeError):
    """The registry could not be read as a whole; the sync is skipped with this reason."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer usefully (connection error, non-200, not JSON, bad shape)."""


class RegistryInconsistent(RegistryError):
    """The registry's parts do not belong together (indices from different BDS runs)."""

    def __init__(self, message: str, *, etag: str | None = None):
        super().__init__(message)
        self.etag = etag


@dataclass
class RegistrySnapshot:
    """One consistent reading of a registry.

    :param publishers: publisher records (see the module docstring).
    :param datasets: dataset records.
    :param index_created: the registry's own creation time (Unix seconds), when it has one.
    :param etag: the dataset index's ETag (pass it to the next ``fetch``), if any.
    :param source: ``bds`` or ``ckan``.
    :param rejected: ``{"kind": "publisher"|"dataset", "record": {...}, "reason": text}`` for
        every malformed entry left out (``record`` keeps the entry's scalar fields).
    """

    publishers: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    index_created: int | None
    etag: str | None
    source: str
    rejected: list[dict[str, Any]] = field(default_factory=list)


class RegistrySource(Protocol):
    """A registry reader.  ``fetch`` returns ``None`` when the registry is known unchanged."""

    source: str

    def fetch(self, previous_etag: str | None = None) -> RegistrySnapshot | None: ...

    def check(self) -> str:
        """One cheap request that says the registry answers (the connection's Test button)."""
        ...

    def close(self) -> None: ...


def text(value: Any) -> str | None:
    """A stripped non-empty string, or ``None`` for anything else."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


MAX_SHOWN_TEXT = 500


def _shown(record: Any) -> Any:
    """A rejected entry as recorded: its scalar fields (text shortened), enough to find it."""
    if not isinstance(record, dict):
        return repr(record)[:MAX_SHOWN_TEXT]
    return {
        str(key): value[:MAX_SHOWN_TEXT] if isinstance(value, str) else value
        for key, value in record.items()
        if value is None or isinstance(value, str | int | float | bool)
    }


def reject(rejected: list[dict[str, Any]], kind: str, record: Any, reason: str) -> None:
    rejected.append({"kind": kind, "record": _shown(record), "reason": reason})


def map_records(
    mapped: Iterable[tuple[Any, dict[str, Any] | str]], kind: str, rejected: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Keep the records a source mapped, reject the entries it could not (its reason).

    ``mapped`` yields ``(raw entry, record or reason)``; a kept record carries its raw entry
    under ``"_raw"`` for :func:`finish_snapshot`.
    """
    kept = []
    for raw, record in mapped:
        if isinstance(record, str):
            reject(rejected, kind, raw, record)
        else:
            kept.append({**record, "_raw": raw})
    return kept


def first_missing(required: dict[str, str | None]) -> str | None:
    """``"no <field>"`` for the first required text (in order) that is missing, else ``None``."""
    for name, value in required.items():
        if not value:
            return f"no {name}"
    return None


def dataset_record(
    dataset_id: str | None,
    name: str | None,
    hash_: str,
    url: str | None,
    publisher: str | None,
    cached_dataset_url: str | None,
) -> dict[str, Any]:
    """A dataset record as every source returns it (see the module docstring)."""
    return {
        "id": dataset_id,
        "name": name,
        "hash": hash_,
        "url": url,
        "publisher": publisher,
        "cached_dataset_url": cached_dataset_url,
    }


def finish_snapshot(
    publishers: list[dict[str, Any]],
    datasets: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    *,
    index_created: int | None,
    etag: str | None,
    source: str,
) -> RegistrySnapshot:
    """Drop duplicates and orphans, count each publisher's datasets, build the snapshot.

    ``publishers`` and ``datasets`` are already mapped and individually valid; each carries
    its raw entry under ``"_raw"`` so a rejection can show it.
    """
    kept_publishers: dict[str, dict[str, Any]] = {}
    for pub in publishers:
        raw = pub.pop("_raw")
        if pub["org_id"] in kept_publishers:
            reject(rejected, "publisher", raw, f"duplicate publisher id {pub['org_id']}")
            continue
        kept_publishers[pub["org_id"]] = pub
    kept_datasets: dict[str, dict[str, Any]] = {}
    for ds in datasets:
        raw = ds.pop("_raw")
        if ds["id"] in kept_datasets:
            reject(rejected, "dataset", raw, f"duplicate dataset id {ds['id']}")
        elif ds["publisher"] not in kept_publishers:
            # The document table references its publisher: such a row cannot be stored.
            reject(rejected, "dataset", raw, f"publisher {ds['publisher']} is not in the publisher list")
        else:
            kept_datasets[ds["id"]] = ds
    counts = Counter(ds["publisher"] for ds in kept_datasets.values())
    for org_id, pub in kept_publishers.items():
        pub["package_count"] = counts.get(org_id, 0)
    return RegistrySnapshot(
        publishers=list(kept_publishers.values()),
        datasets=list(kept_datasets.values()),
        index_created=index_created,
        etag=etag,
        source=source,
        rejected=rejected,
    )


def checked_hash(value: Any) -> str | None:
    """``""`` for no hash, the hash when it is 40 hex digits, ``None`` when malformed."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and SHA1_HEX.match(value):
        return value
    return None


def get_json(
    client: httpx.Client,
    url: str,
    settings: Settings,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    accept_not_modified: bool = False,
) -> tuple[httpx.Response, Any]:
    """GET ``url`` and parse its JSON body.

    :return: (response, parsed body); the body is ``None`` for a 304 when
        ``accept_not_modified``.
    :raises RegistryUnavailable: transport error, refused URL, non-200 status, body over
        ``settings.max_download_bytes`` or not JSON.
    """
    try:
        with net.open_stream(client, url, settings, params=params, headers=headers) as response:
            if response.status_code == 304 and accept_not_modified:
                return response, None
            if response.status_code != 200:
                raise RegistryUnavailable(f"{url} answered HTTP {response.status_code}")
            body = net.read_capped(response, settings.max_download_bytes)
    except (
        httpx.HTTPError,
        net.RefusedTarget,
        net.RedirectLimitExceeded,
        net.ResponseTooLarge,
        net.UndecodableBody,
    ) as exc:
        raise RegistryUnavailable(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    try:
        return response, json.loads(body)
    except ValueError as exc:
        kind = response.headers.get("content-type", "unknown content type")
        raise RegistryUnavailable(f"{url} did not return JSON ({kind}): {exc}") from exc
