"""The reference's per-stage document columns, written when a stage finishes (hash-guarded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from iati_refresher.db.repository.common import NOW
from iati_refresher.db.types import Db


def finish_download(conn: Db, results: Sequence[dict[str, Any]]) -> None:
    """``results``: id, hash, ok (bool), download_error (int|None), etag, last_modified,
    bytes, encoding.  ``downloaded`` is NULL whenever ``download_error`` is set."""
    with conn.cursor() as cur:
        cur.executemany(
            f"""
            UPDATE document SET
                downloaded = CASE WHEN %(ok)s::boolean THEN {NOW} END,
                download_error = CASE WHEN %(ok)s::boolean THEN NULL ELSE %(download_error)s::int END,
                source_etag = CASE WHEN %(ok)s::boolean THEN %(etag)s::varchar ELSE source_etag END,
                source_last_modified = CASE WHEN %(ok)s::boolean THEN %(last_modified)s::varchar
                                            ELSE source_last_modified END,
                source_bytes = CASE WHEN %(ok)s::boolean THEN %(bytes)s::bigint ELSE source_bytes END,
                source_encoding = CASE WHEN %(ok)s::boolean THEN %(encoding)s::varchar ELSE source_encoding END
            WHERE id = %(id)s AND hash = %(hash)s
            """,
            [
                {"etag": None, "last_modified": None, "bytes": None, "encoding": None, "download_error": None, **r}
                for r in results
            ],
        )


def mark_not_downloaded(conn: Db, document_id: str, hash_: str) -> None:
    """The source blob vanished: download again (as the reference does)."""
    conn.execute(
        """UPDATE document SET downloaded = NULL, clean_start = NULL, clean_end = NULL, clean_error = NULL
            WHERE id = %s AND hash = %s""",
        (document_id, hash_),
    )
    conn.execute("DELETE FROM document_stage WHERE document_id = %s AND stage = 'download'", (document_id,))


def finish_clean(conn: Db, doc: dict[str, Any], *, ok: bool, error: str | None) -> None:
    conn.execute(
        f"""UPDATE document SET clean_end = CASE WHEN %(ok)s THEN {NOW} END, clean_error = %(error)s
             WHERE id = %(id)s AND hash = %(hash)s""",
        {"ok": ok, "error": error, "id": doc["id"], "hash": doc["hash"]},
    )


def finish_flatten(
    conn: Db, doc: dict[str, Any], *, ok: bool, manifest: Any = None, activities: int | None = None
) -> None:
    conn.execute(
        f"""UPDATE document SET
               flatten_end = CASE WHEN %(ok)s THEN {NOW} END,
               flatten_api_error = CASE WHEN %(ok)s THEN NULL ELSE 1 END,
               flattened_activities = CASE WHEN %(ok)s THEN %(manifest)s ELSE flattened_activities END,
               activity_count = CASE WHEN %(ok)s THEN %(activities)s ELSE activity_count END
             WHERE id = %(id)s AND hash = %(hash)s""",
        {
            "ok": ok,
            "manifest": Jsonb(manifest) if manifest is not None else None,
            "activities": activities,
            "id": doc["id"],
            "hash": doc["hash"],
        },
    )


def finish_lakify(conn: Db, doc: dict[str, Any], *, ok: bool, error: str | None) -> None:
    conn.execute(
        f"""UPDATE document SET lakify_end = CASE WHEN %(ok)s THEN {NOW} END, lakify_error = %(error)s
             WHERE id = %(id)s AND hash = %(hash)s""",
        {"ok": ok, "error": error, "id": doc["id"], "hash": doc["hash"]},
    )


def reset_lakify(conn: Db, document_id: str, hash_: str) -> None:
    """A lake blob the index stage needs is missing: lakify again."""
    conn.execute(
        """UPDATE document SET lakify_start = NULL, lakify_end = NULL, lakify_error = NULL
            WHERE id = %s AND hash = %s""",
        (document_id, hash_),
    )
    conn.execute("DELETE FROM document_stage WHERE document_id = %s AND stage = 'lakify'", (document_id,))


def finish_index(conn: Db, doc: dict[str, Any], *, ok: bool, error: str | None, activities: int | None = None) -> None:
    conn.execute(
        f"""UPDATE document SET
               solrize_end = CASE WHEN %(ok)s THEN {NOW} ELSE solrize_end END,
               last_solrize_end = CASE WHEN %(ok)s THEN {NOW} ELSE last_solrize_end END,
               solr_api_error = CASE WHEN %(ok)s THEN NULL ELSE %(error)s END,
               solrize_reindex = CASE WHEN %(ok)s THEN false ELSE solrize_reindex END,
               solr_indexed_hash = CASE WHEN %(ok)s THEN hash ELSE solr_indexed_hash END,
               solr_activity_count = CASE WHEN %(ok)s THEN %(activities)s ELSE solr_activity_count END
             WHERE id = %(id)s AND hash = %(hash)s""",
        {"ok": ok, "error": error, "activities": activities, "id": doc["id"], "hash": doc["hash"]},
    )


def mark_unindexed(conn: Db, document_id: str) -> None:
    conn.execute(
        "UPDATE document SET solr_indexed_hash = NULL, solr_activity_count = NULL WHERE id = %s",
        (document_id,),
    )


def indexed_versions(conn: Db) -> dict[str, tuple[str, ...]]:
    """document id → the hashes whose documents Solr may hold (for reconciliation).

    The indexed version's, and the current version's: an index attempt of the current
    version that failed part-way has overwritten some activities in place (their ids are
    the same in every version) and Solr keeps what it accepted; deleting those would take
    activities out of search that the old version has.  A dataset with no indexed version
    (excluded, or removed) may hold nothing."""
    rows = conn.execute(
        "SELECT id, solr_indexed_hash, hash FROM document WHERE solr_indexed_hash IS NOT NULL"
    ).fetchall()
    return {r["id"]: tuple(dict.fromkeys(h for h in (r["solr_indexed_hash"], r["hash"]) if h)) for r in rows}
