"""The other DAGs' task bodies: migration, publisher safety, ad-hoc validation, reconciliation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from iati_refresher import connections
from iati_refresher.db import migrate
from iati_refresher.db import repository as repo
from iati_refresher.pipeline.common import database
from iati_refresher.settings import Settings, get_settings
from iati_refresher.storage import blob_config_for, blob_store

log = logging.getLogger(__name__)


def migrate_database(target: int | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Bring the database to this code's migration and make sure the blob containers exist."""
    settings = settings or get_settings()
    with database(settings, check_schema=False) as conn:
        before, after = migrate.migrate(conn, settings.migrations_dir, target)
    log.info("refresher database: migration %s → %s", before, after)
    with blob_store(settings) as store:
        store.ensure_containers(containers(settings))
    return {"from": before, "to": after, "storage": blob_config_for(settings).describe()}


def containers(settings: Settings) -> list[str]:
    return [
        settings.source_container,
        settings.clean_container,
        settings.lake_container,
        settings.flat_container,
        settings.adhoc_container,
    ]


def safety_check(
    settings: Settings | None = None, *, send_slack: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Read unflag requests, flag flooding publishers, notify each new flag once."""
    from iati_refresher import notify
    from iati_refresher.stages.safety import apply_unflag_requests, notify_flagged

    settings = settings or get_settings()
    with database(settings) as conn:
        queue = notify.unflag_queue_for(settings)
        unflagged: list[str] = []
        if queue is not None:

            def unflag(org_id: str) -> list[str]:
                org_ids = repo.unflag_publisher(conn, org_id)
                conn.commit()
                return org_ids

            unflagged = apply_unflag_requests(queue, unflag)
        flagged = repo.flag_publishers(conn, settings.safety_check_threshold, settings.safety_check_period_s)
        conn.commit()
        pending = repo.publishers_to_notify(conn)
        conn.rollback()
        notified = (
            notify_flagged(pending, send_slack, notify.commshub_for(settings), settings=settings) if pending else []
        )
        for org_id in notified:
            repo.mark_notified(conn, org_id)
        conn.commit()
    return {"unflagged": unflagged, "flagged": flagged, "notified": notified}


def unflag_publisher(publisher: str, settings: Settings | None = None) -> list[str]:
    with database(settings) as conn:
        org_ids = repo.unflag_publisher(conn, publisher)
        conn.commit()
    return org_ids


def adhoc_source(url: str | None, blob: str | None) -> dict[str, str]:
    """What ``iati_adhoc_validate`` validates: exactly one of a URL or a blob of the ad-hoc container."""
    if bool(url) == bool(blob):
        raise ValueError("give exactly one of url or blob")
    return {"source": str(url or blob), "source_type": "url" if url else "blob"}


def save_adhoc_validation(
    result: dict[str, Any],
    *,
    filename: str | None,
    guid: str | None,
    session_id: str | None,
    user_email: str | None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Store an :class:`~iati_refresher.operators.IatiValidatorOperator` result in
    ``adhoc_validation`` as validator-services reads it.  Returns the row id and outcome."""
    row: dict[str, Any] = {"guid": guid, "filename": filename, "session_id": session_id, "user_email": user_email}
    report = result.get("report")
    if report is not None:
        row["report"] = report
        row["valid"] = bool(report.get("valid"))
        if result.get("status") not in (200, None):
            row["validation_api_error"] = str(result["status"])
    else:
        row["validation_api_error"] = str(result.get("error") or result.get("status"))
    with database(settings) as conn:
        row_id = repo.save_adhoc_validation(conn, row)
        conn.commit()
    return {"id": row_id, "valid": row.get("valid"), "validation_api_error": row.get("validation_api_error")}


def remove_from_index(ids: Sequence[str], settings: Settings | None = None) -> int:
    """Take datasets out of Solr: their documents deleted everywhere, their indexed version
    forgotten (the index stage puts them back when asked).  Returns how many documents went."""
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.index import unindex_document

    settings = settings or get_settings()
    removed = 0
    with open_solr(settings) as solr, database(settings) as conn:
        if solr is None:
            raise connections.ConnectionMissing(connections.SOLR, "the Solr to remove the datasets from")
        for doc_id in ids:
            removed += unindex_document(doc_id, solr, settings)
            repo.mark_unindexed(conn, doc_id)
            conn.commit()
    return removed


def reconcile_solr(settings: Settings | None = None) -> dict[str, Any]:
    """Remove Solr documents whose dataset is gone or whose version is not the indexed one."""
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.index import reconcile

    settings = settings or get_settings()
    with open_solr(settings) as solr:
        if solr is None:
            return {"skipped": "no Solr connection ('solr') is configured"}
        with database(settings) as conn:
            expected = repo.indexed_versions(conn)
            conn.rollback()
        return reconcile(solr, expected, settings)


def orphaned_blobs(
    settings: Settings | None = None, *, chunk: int = 1000, max_chunks: int = 50
) -> list[dict[str, Any]]:
    """The blobs no document needs — source/clean files of hashes no document has, lake and
    flat blobs of datasets that left the registry, flat files of older versions — as
    ``{"container", "names"}`` chunks for :class:`~iati_refresher.operators.RefresherBlobOperator`
    (``remove``).  At most ``max_chunks`` chunks a run: the rest waits for the next.  Expired
    claims are deleted on the way."""
    from iati_refresher.stages.lakify import lake_bundle_name

    settings = settings or get_settings()
    with database(settings) as conn:
        hashes = repo.document_hashes(conn)
        repo.delete_expired_claims(conn)
        conn.commit()
    live_hashes = set(hashes.values())
    found: list[dict[str, Any]] = []

    def add(container: str, names: list[str]) -> None:
        for start in range(0, len(names), chunk):
            if len(found) < max_chunks:
                found.append({"container": container, "names": names[start : start + chunk]})

    with blob_store(settings) as blobs:
        for container in (settings.source_container, settings.clean_container):
            add(container, [n for n in blobs.list(container) if n.removesuffix(".xml") not in live_hashes])
        for container in (settings.lake_container, settings.flat_container):
            orphans = []
            for name in blobs.list(container):
                doc_id = name.split("/", 1)[0]
                if doc_id not in hashes or (
                    container == settings.flat_container
                    and name not in (f"{doc_id}/{hashes[doc_id]}.jsonl", lake_bundle_name(doc_id, hashes[doc_id]))
                ):
                    orphans.append(name)
            add(container, orphans)
    return found


def reconcile_blobs(settings: Settings | None = None) -> dict[str, int]:
    """Remove every orphaned blob (:func:`orphaned_blobs`) in this process; counts per container."""
    settings = settings or get_settings()
    counts: dict[str, int] = {}
    with blob_store(settings) as blobs:
        for part in orphaned_blobs(settings, max_chunks=10**9):
            counts[part["container"]] = counts.get(part["container"], 0) + blobs.delete(
                part["container"], part["names"]
            )
    return counts
