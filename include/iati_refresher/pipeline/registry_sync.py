"""The sync task: fetch the registry, apply it, remove what left it."""

from __future__ import annotations

import logging
from typing import Any

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db
from iati_refresher.pipeline.common import database, utcnow
from iati_refresher.settings import Settings, get_settings
from iati_refresher.storage import BlobStore, blob_store

log = logging.getLogger(__name__)


def sync_registry(run_id: str | None, settings: Settings | None = None, *, force: bool = False) -> dict[str, Any]:
    """Fetch the registry and apply it.  Returns the sync counts (``refused`` when a gate
    stopped it; ``skipped_unchanged`` when the index ETag did not change)."""
    from iati_refresher.clients import registry_for
    from iati_refresher.registry.base import RegistryInconsistent, RegistryUnavailable
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.sync import SyncResult, sync_snapshot

    settings = settings or get_settings()
    source = registry_for(settings)
    source_name = settings.registry_source
    with database(settings) as conn:
        state = repo.registry_state(conn, source_name)
        conn.rollback()
        previous_etag = None if force or state is None else state["etag"]
        try:
            snapshot = source.fetch(previous_etag)
        except (RegistryInconsistent, RegistryUnavailable) as exc:
            repo.save_registry_state(
                conn, source_name, etag=None, index_created=None, synced=False, result=f"skipped: {exc}"
            )
            conn.commit()
            log.warning("registry sync skipped: %s", exc)
            return {**SyncResult(source=source_name).counts(), "skipped_reason": str(exc)}
        if snapshot is None:
            repo.save_registry_state(
                conn, source_name, etag=previous_etag, index_created=None, synced=False, result="unchanged index (ETag)"
            )
            conn.commit()
            return {**SyncResult(source=source_name, skipped_unchanged=True).counts()}
        with blob_store(settings) as blobs, open_solr(settings) as solr:
            result = sync_snapshot(
                conn,
                snapshot,
                seen_at=utcnow(),
                run_id=run_id,
                publisher_safety_share=settings.publisher_safety_share,
                document_safety_share=settings.document_safety_share,
                remove_version=lambda doc_id, old_hash: remove_version_blobs(conn, blobs, settings, doc_id, old_hash),
                remove_dataset=lambda doc_id, hash_: remove_dataset_everywhere(
                    conn, blobs, solr, settings, doc_id, hash_
                ),
            )
        repo.save_registry_state(
            conn,
            source_name,
            etag=snapshot.etag,
            index_created=snapshot.index_created,
            synced=result.refused is None,
            result=result.refused or "synced",
        )
        conn.commit()
    counts = result.counts()
    if result.rejected:
        counts["rejected_records"] = result.rejected[:50]
    if result.cleanup_errors:
        counts["cleanup_error_messages"] = result.cleanup_errors[:20]
    log.info("registry sync: %s", {k: v for k, v in counts.items() if not isinstance(v, list)})
    return counts


def _shared_hash(conn: Db, hash_: str, doc_id: str) -> bool:
    shared = repo.documents_sharing_hash(conn, hash_, doc_id) > 0
    conn.rollback()
    return shared


def remove_version_blobs(conn: Db, blobs: BlobStore, settings: Settings, doc_id: str, hash_: str) -> None:
    """Delete one old version's files: source and clean (unless another dataset has the
    same content, so the same blob name) and its flattened output."""
    if hash_ and not _shared_hash(conn, hash_, doc_id):
        blobs.delete(settings.source_container, [f"{hash_}.xml"])
        blobs.delete(settings.clean_container, [f"{hash_}.xml"])
    from iati_refresher.stages.lakify import lake_bundle_name

    blobs.delete(settings.flat_container, [f"{doc_id}/{hash_}.jsonl", lake_bundle_name(doc_id, hash_)])


def remove_dataset_everywhere(
    conn: Db, blobs: BlobStore, solr: Any, settings: Settings, doc_id: str, hash_: str
) -> None:
    """A dataset left the registry: remove it from Solr, the lake and the blob containers."""
    if solr is not None:
        from iati_refresher.stages.index import unindex_document

        unindex_document(doc_id, solr, settings)
    remove_version_blobs(conn, blobs, settings, doc_id, hash_)
    blobs.delete_prefix(settings.lake_container, f"{doc_id}/")
    blobs.delete_prefix(settings.flat_container, f"{doc_id}/")
