"""Registry sync: publishers, documents, their changes, and the last synced index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iati_refresher.db.repository.common import NOW, one_row
from iati_refresher.db.types import Db


def count_publishers(conn: Db) -> int:
    return int(one_row(conn.execute("SELECT count(*) AS n FROM publisher"))["n"])


def count_documents(conn: Db) -> int:
    return int(one_row(conn.execute("SELECT count(*) AS n FROM document"))["n"])


def upsert_publisher(conn: Db, pub: dict[str, Any], seen_at: Any) -> None:
    """Insert or update a publisher by org_id.  A rename updates the name (the reference
    skipped renamed publishers, then deleted them with a cascade over their documents)."""
    conn.execute(
        """
        INSERT INTO publisher (org_id, name, title, created, last_seen, package_count, iati_id,
                               description, state, image_url, country_code)
        VALUES (%(org_id)s, %(name)s, %(title)s, %(seen)s, %(seen)s, %(package_count)s, %(iati_id)s,
                %(description)s, %(state)s, %(image_url)s, %(country_code)s)
        ON CONFLICT (org_id) DO UPDATE SET
            name = EXCLUDED.name, title = EXCLUDED.title, last_seen = EXCLUDED.last_seen,
            package_count = EXCLUDED.package_count, iati_id = EXCLUDED.iati_id,
            description = COALESCE(EXCLUDED.description, publisher.description),
            state = COALESCE(EXCLUDED.state, publisher.state),
            image_url = COALESCE(EXCLUDED.image_url, publisher.image_url),
            country_code = COALESCE(EXCLUDED.country_code, publisher.country_code)
        """,
        {
            "description": None,
            "state": None,
            "image_url": None,
            "country_code": None,
            "package_count": None,
            "iati_id": None,
            **pub,
            "seen": seen_at,
        },
    )


# Columns nulled when a document's content (hash) changes: every pipeline column of the
# reference, plus ours.  solr_indexed_hash stays: the old version is still searchable.
RESET_ON_CHANGE = (
    "downloaded",
    "download_error",
    "validation_request",
    "validation_api_error",
    "validation",
    "file_schema_valid",
    "lakify_start",
    "lakify_end",
    "lakify_error",
    "flatten_start",
    "flatten_end",
    "flatten_api_error",
    "solrize_start",
    "solrize_end",
    "solr_api_error",
    "clean_start",
    "clean_end",
    "clean_error",
    "flattened_activities",
    "source_etag",
    "source_last_modified",
    "source_bytes",
    "source_encoding",
    "activity_count",
)


def upsert_document(conn: Db, doc: dict[str, Any], seen_at: Any) -> tuple[str, str | None]:
    """Insert or update a registry dataset.  Returns (change, old_hash) where change is
    ``added``, ``updated`` (hash changed: pipeline columns reset) or ``unchanged``."""
    row = conn.execute("SELECT hash FROM document WHERE id = %s FOR UPDATE", (doc["id"],)).fetchone()
    params = {**doc, "seen": seen_at}
    if row is None:
        conn.execute(
            """
            INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, name, cached_dataset_url)
            VALUES (%(id)s, %(hash)s, %(url)s, %(seen)s, %(seen)s, %(publisher)s, %(name)s,
                    %(cached_dataset_url)s)
            """,
            params,
        )
        return "added", None
    if row["hash"] != doc["hash"]:
        resets = ", ".join(f"{c} = NULL" for c in RESET_ON_CHANGE)
        conn.execute(
            f"""
            UPDATE document SET hash = %(hash)s, url = %(url)s, name = %(name)s, modified = %(seen)s,
                   cached_dataset_url = %(cached_dataset_url)s, last_seen = %(seen)s,
                   publisher = %(publisher)s, {resets}
            WHERE id = %(id)s
            """,
            params,
        )
        conn.execute("DELETE FROM document_stage WHERE document_id = %s", (doc["id"],))
        return "updated", row["hash"]
    # Unchanged content.  Unlike the reference, the cached copy URL is refreshed too.
    conn.execute(
        """
        UPDATE document SET last_seen = %(seen)s, publisher = %(publisher)s, name = %(name)s,
               url = %(url)s, cached_dataset_url = %(cached_dataset_url)s
        WHERE id = %(id)s
        """,
        params,
    )
    return "unchanged", None


UNCHANGED_KEYS = ("id", "hash", "url", "name", "publisher", "cached_dataset_url")


def touch_unchanged_documents(conn: Db, docs: Sequence[dict[str, Any]], seen_at: Any) -> int:
    """What :func:`upsert_document` does for datasets whose hash did not change, for all of
    them in one statement: ``last_seen`` and the registry's descriptive columns.

    Rows whose hash no longer matches are left alone.  Returns the number of rows updated.
    """
    if not docs:
        return 0
    columns = {key: [d[key] for d in docs] for key in UNCHANGED_KEYS}
    return conn.execute(
        """
        UPDATE document d SET last_seen = %(seen)s, publisher = x.publisher, name = x.name, url = x.url,
               cached_dataset_url = x.cached_dataset_url
          FROM unnest(%(id)s::varchar[], %(hash)s::varchar[], %(url)s::varchar[], %(name)s::varchar[],
                      %(publisher)s::varchar[], %(cached_dataset_url)s::varchar[])
               AS x(id, hash, url, name, publisher, cached_dataset_url)
         WHERE d.id = x.id AND d.hash = x.hash
        """,
        {**columns, "seen": seen_at},
    ).rowcount


def stale_documents(conn: Db, seen_before: Any) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, hash, name, publisher FROM document WHERE last_seen < %s ORDER BY id", (seen_before,)
    ).fetchall()


def documents_sharing_hash(conn: Db, hash_: str, except_id: str) -> int:
    return int(
        one_row(conn.execute("SELECT count(*) AS n FROM document WHERE hash = %s AND id <> %s", (hash_, except_id)))[
            "n"
        ]
    )


def delete_document(conn: Db, document_id: str) -> None:
    conn.execute("DELETE FROM document WHERE id = %s", (document_id,))


def delete_stale_publishers(conn: Db, seen_before: Any) -> list[str]:
    """Delete publishers missing from the registry that no longer own any document."""
    rows = conn.execute(
        """
        DELETE FROM publisher p WHERE p.last_seen < %s
           AND NOT EXISTS (SELECT 1 FROM document d WHERE d.publisher = p.org_id)
        RETURNING org_id
        """,
        (seen_before,),
    ).fetchall()
    return [r["org_id"] for r in rows]


def record_registry_change(
    conn: Db,
    run_id: str | None,
    document_id: str,
    change: str,
    *,
    name: str | None,
    publisher: str | None,
    old_hash: str | None,
    new_hash: str | None,
) -> None:
    conn.execute(
        f"""
        INSERT INTO registry_change (run_id, changed_at, document_id, document_name, publisher,
                                     change, old_hash, new_hash)
        VALUES (%s, {NOW}, %s, %s, %s, %s, %s, %s)
        """,
        (run_id, document_id, name, publisher, change, old_hash, new_hash),
    )


def registry_changes(conn: Db, run_id: str) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM registry_change WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()


def registry_state(conn: Db, source: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM registry_state WHERE source = %s", (source,)).fetchone()


def save_registry_state(
    conn: Db,
    source: str,
    *,
    etag: str | None,
    index_created: int | None,
    synced: bool,
    result: str,
) -> None:
    conn.execute(
        f"""
        INSERT INTO registry_state (source, etag, index_created, checked_at, synced_at, last_result)
        VALUES (%(source)s, %(etag)s, %(created)s, {NOW}, CASE WHEN %(synced)s THEN {NOW} END, %(result)s)
        ON CONFLICT (source) DO UPDATE SET
            etag = CASE WHEN %(synced)s THEN EXCLUDED.etag ELSE registry_state.etag END,
            index_created = CASE WHEN %(synced)s THEN EXCLUDED.index_created ELSE registry_state.index_created END,
            checked_at = EXCLUDED.checked_at,
            synced_at = COALESCE(EXCLUDED.synced_at, registry_state.synced_at),
            last_result = EXCLUDED.last_result
        """,
        {"source": source, "etag": etag, "created": index_created, "synced": synced, "result": result},
    )
