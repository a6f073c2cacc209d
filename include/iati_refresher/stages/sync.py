"""Registry sync: bring ``publisher`` and ``document`` in line with a registry snapshot.

As the reference (facts §2.2): upsert publishers and documents keyed by registry id, reset
every pipeline column when a document's hash changes, and remove documents the registry
no longer lists, everywhere they live.  Two safety gates refuse the whole sync when more
than a share of the known publishers or documents vanished (a broken index must not wipe
the datastore).

Fixed reference defects:

* a renamed publisher is updated in place, never deleted with a cascade over its documents;
* one bad row (a missing publisher, a NULL url) is recorded in ``rejected`` and skipped,
  the rest of the sync carries on;
* blobs are only deleted once the database change is committed, and a content-addressed
  blob (``source/{hash}.xml``) that another dataset still uses is kept.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    """What a sync did; ``refused`` is set when a safety gate stopped it."""

    source: str
    skipped_unchanged: bool = False
    refused: str | None = None
    publishers_seen: int = 0
    publishers_removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    cleanup_errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "skipped_unchanged": self.skipped_unchanged,
            "refused": self.refused,
            "publishers": self.publishers_seen,
            "publishers_removed": len(self.publishers_removed),
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": self.unchanged,
            "removed": len(self.removed),
            "rejected": len(self.rejected),
            "cleanup_errors": len(self.cleanup_errors),
        }


# Cleanup callbacks, run after the database commit:
#   remove_version(document_id, hash) — blobs of one version of a dataset (source/clean/flat)
#   remove_dataset(document_id, hash) — everything of a dataset (blobs, lake, Solr)
RemoveVersion = Callable[[str, str], None]
RemoveDataset = Callable[[str, str], None]


def safety_refusal(known: int, incoming: int, share: float, what: str) -> str | None:
    if known and incoming < share * known:
        return (
            f"refused: the registry lists {incoming} {what} but {known} are known "
            f"(below {share:.0%}); nothing was changed — check the registry before forcing"
        )
    return None


def sync_snapshot(
    conn: Db,
    snapshot: Any,
    *,
    seen_at: datetime,
    run_id: str | None,
    publisher_safety_share: float,
    document_safety_share: float,
    remove_version: RemoveVersion,
    remove_dataset: RemoveDataset,
) -> SyncResult:
    """Apply ``snapshot`` (a :class:`iati_refresher.registry.base.RegistrySnapshot`).

    The database work is one transaction; blob and Solr clean-up happens after it commits
    (a failure there is recorded, and the reconciliation DAG removes what is left).
    """
    result = SyncResult(source=snapshot.source)
    result.rejected.extend(getattr(snapshot, "rejected", []) or [])
    result.refused = _refusal(conn, snapshot, publisher_safety_share, document_safety_share)
    if result.refused:
        conn.rollback()
        return result
    _apply_publishers(conn, snapshot.publishers, seen_at, result)
    old_versions = _apply_datasets(conn, snapshot.datasets, seen_at, run_id, result)
    stale = _remove_stale(conn, seen_at, run_id, result)
    conn.commit()
    _clean_up_after_commit(result, old_versions, stale, remove_version, remove_dataset)
    return result


def _refusal(conn: Db, snapshot: Any, publisher_safety_share: float, document_safety_share: float) -> str | None:
    """The safety gate: a registry that lost too many publishers or datasets is not applied."""
    return safety_refusal(
        repo.count_publishers(conn), len(snapshot.publishers), publisher_safety_share, "publishers"
    ) or safety_refusal(repo.count_documents(conn), len(snapshot.datasets), document_safety_share, "datasets")


def _apply_publishers(conn: Db, publishers: list[dict[str, Any]], seen_at: datetime, result: SyncResult) -> None:
    for pub in publishers:
        if _in_savepoint(conn, result, pub, repo.upsert_publisher, seen_at) is not None:
            result.publishers_seen += 1


def _apply_datasets(
    conn: Db, datasets: list[dict[str, Any]], seen_at: datetime, run_id: str | None, result: SyncResult
) -> list[tuple[str, str]]:
    """Store every dataset (unchanged ones touched in bulk), record each change; returns the
    (document id, old hash) of every replaced version, for the clean-up after the commit."""
    old_versions: list[tuple[str, str]] = []
    touched = _touch_unchanged(conn, datasets, seen_at)
    result.unchanged += len(touched)
    for ds in datasets:
        if ds.get("id") in touched:
            continue
        upserted = _in_savepoint(conn, result, ds, repo.upsert_document, seen_at)
        if upserted is None:
            continue
        change, old_hash = upserted
        if change == "unchanged":
            result.unchanged += 1
            continue
        (result.added if change == "added" else result.updated).append(ds["id"])
        repo.record_registry_change(
            conn,
            run_id,
            ds["id"],
            change,
            name=ds.get("name"),
            publisher=ds.get("publisher"),
            old_hash=old_hash,
            new_hash=ds["hash"],
        )
        if change == "updated" and old_hash:
            old_versions.append((ds["id"], old_hash))
    return old_versions


def _remove_stale(conn: Db, seen_at: datetime, run_id: str | None, result: SyncResult) -> list[dict[str, Any]]:
    """Delete the datasets (and publishers) the registry no longer lists; returns the datasets."""
    stale = repo.stale_documents(conn, seen_at)
    for doc in stale:
        repo.record_registry_change(
            conn,
            run_id,
            doc["id"],
            "removed",
            name=doc["name"],
            publisher=doc["publisher"],
            old_hash=doc["hash"],
            new_hash=None,
        )
        repo.delete_document(conn, doc["id"])
        result.removed.append(doc["id"])
    result.publishers_removed = repo.delete_stale_publishers(conn, seen_at)
    return stale


def _clean_up_after_commit(
    result: SyncResult,
    old_versions: list[tuple[str, str]],
    stale: list[dict[str, Any]],
    remove_version: RemoveVersion,
    remove_dataset: RemoveDataset,
) -> None:
    """Blob and Solr clean-up, after the commit (failures recorded; reconciliation finishes)."""
    for doc_id, old_hash in old_versions:
        _cleanup(result, f"old version {old_hash} of {doc_id}", functools.partial(remove_version, doc_id, old_hash))
    for doc in stale:
        _cleanup(result, f"removed dataset {doc['id']}", functools.partial(remove_dataset, doc["id"], doc["hash"]))


def _touch_unchanged(conn: Db, datasets: list[dict[str, Any]], seen_at: datetime) -> set[str]:
    """Update every dataset whose hash did not change in one statement; returns their ids.

    Most runs change little, so this is nearly the whole registry: one query instead of
    several round trips per dataset.  When anything is unusual (a duplicate id, a missing
    field, a row the statement rejects, a hash changed meanwhile) nothing is done here and
    every dataset takes the careful path, one savepoint each.
    """
    known = repo.document_hashes(conn)
    candidates = [
        ds for ds in datasets if all(key in ds for key in repo.UNCHANGED_KEYS) and known.get(ds["id"]) == ds["hash"]
    ]
    ids = {ds["id"] for ds in candidates}
    if not candidates or len(ids) != len(candidates):
        return set()
    try:
        with conn.transaction():
            if repo.touch_unchanged_documents(conn, candidates, seen_at) != len(candidates):
                raise _NotAllTouched
    except (_NotAllTouched, psycopg.DataError, psycopg.IntegrityError) as exc:
        log.info("bulk update of unchanged datasets skipped (%s): one by one instead", type(exc).__name__)
        return set()
    return ids


class _NotAllTouched(Exception):
    """The bulk update did not match every row it was given: undo it."""


def _in_savepoint(
    conn: Db,
    result: SyncResult,
    record: dict[str, Any],
    upsert: Callable[[Db, dict[str, Any], datetime], Any],
    seen_at: datetime,
) -> Any:
    """``upsert(conn, record, seen_at)`` in a savepoint; a bad record is recorded, not fatal.

    :return: what ``upsert`` returned (``True`` when it returned nothing), or ``None`` when
        the record was rejected.
    """
    try:
        with conn.transaction():
            value = upsert(conn, record, seen_at)
        return True if value is None else value
    except (psycopg.DataError, psycopg.IntegrityError, KeyError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        log.warning("registry record %s skipped: %s", record.get("id") or record.get("org_id"), reason)
        result.rejected.append({"record": {k: record.get(k) for k in ("id", "org_id", "name")}, "reason": reason})
        return None


def _cleanup(result: SyncResult, what: str, work: Callable[[], None]) -> None:
    try:
        work()
    except Exception as exc:  # storage or Solr trouble: the reconciliation DAG finishes the job
        log.warning("clean-up of %s failed: %s: %s", what, type(exc).__name__, exc)
        result.cleanup_errors.append(f"{what}: {type(exc).__name__}: {exc}")
