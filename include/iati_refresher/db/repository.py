"""Every SQL statement of the pipeline (migration files aside) lives in this module.

Conventions:

* timestamps are naive UTC (``NOW`` below), like the reference's columns;
* every "finish" statement is guarded by the document's hash, so the result of work on an
  old version never lands on a document whose content changed meanwhile;
* stage selection, claims and outcome records work on whole batches (one query per batch).

Functions take an open psycopg connection and leave transaction control to the caller
unless they say otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from iati_refresher.db.types import Db
from iati_refresher.stage_specs import STAGES, stages_from

NOW = "(now() AT TIME ZONE 'UTC')"


def _one(cursor: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    """The one row a statement that always answers (count, RETURNING) returned."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row


# ---------------------------------------------------------------------------------------
# migrations
# ---------------------------------------------------------------------------------------


def lock_migrations(conn: Db) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(727271)")


def current_migration(conn: Db) -> int:
    exists = conn.execute("SELECT to_regclass('public.version') AS t").fetchone()
    if not exists or exists["t"] is None:
        return -1
    row = conn.execute("SELECT migration FROM public.version LIMIT 1").fetchone()
    return -1 if row is None else int(row["migration"])


def set_migration(conn: Db, number: str, migration: int) -> None:
    updated = conn.execute("UPDATE public.version SET number = %s, migration = %s", (number, migration)).rowcount
    if not updated:
        conn.execute("INSERT INTO public.version (number, migration) VALUES (%s, %s)", (number, migration))


# ---------------------------------------------------------------------------------------
# registry sync
# ---------------------------------------------------------------------------------------


def count_publishers(conn: Db) -> int:
    return int(_one(conn.execute("SELECT count(*) AS n FROM publisher"))["n"])


def count_documents(conn: Db) -> int:
    return int(_one(conn.execute("SELECT count(*) AS n FROM document"))["n"])


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
        _one(conn.execute("SELECT count(*) AS n FROM document WHERE hash = %s AND id <> %s", (hash_, except_id)))["n"]
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


# ---------------------------------------------------------------------------------------
# stage selection and claims
# ---------------------------------------------------------------------------------------

# What makes a document ready for each stage (before retry/claim gating).
READY = {
    "download": "d.downloaded IS NULL",
    "validate": """d.downloaded IS NOT NULL AND d.download_error IS NULL AND d.hash <> ''
        AND (d.validation IS NULL OR d.regenerate_validation_report)
        AND NOT (COALESCE(d.file_schema_valid, true) = false
                 AND (d.downloaded > {now} - make_interval(secs => %(safety_period_s)s)
                      OR p.black_flag IS NOT NULL))""",
    "clean": "d.downloaded IS NOT NULL AND d.hash <> '' AND d.validation IS NOT NULL AND d.clean_end IS NULL",
    "flatten": "d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.flatten_end IS NULL",
    "lakify": "d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.lakify_end IS NULL",
    "index": """d.downloaded IS NOT NULL AND d.hash <> '' AND d.flatten_end IS NOT NULL
        AND d.lakify_end IS NOT NULL AND (d.solrize_end IS NULL OR d.solrize_reindex)""",
}

# When another service resets a stage (datastore-services clears flatten or lakify, sets
# solrize_reindex; validator-services sets regenerate_validation_report), a parked document
# comes back to life.
REVIVED_BY = {
    "download": "false",
    "validate": "d.regenerate_validation_report",
    "clean": "false",
    "flatten": "d.flatten_api_error IS NULL",
    "lakify": "d.lakify_error IS NULL",
    "index": "d.solrize_reindex",
}

ORDER = {
    "download": "COALESCE(d.modified, d.first_seen), d.id",
    "validate": "d.regenerate_validation_report DESC, d.downloaded, d.id",
}

DOCUMENT_FIELDS = """d.id, d.hash, d.url, d.name, d.publisher, d.cached_dataset_url, d.downloaded,
    d.download_error, d.file_schema_valid, d.validation, d.regenerate_validation_report,
    d.source_etag, d.source_last_modified, d.source_encoding, d.source_bytes, d.solrize_reindex,
    d.solr_indexed_hash, d.flattened_activities, d.activity_count, p.name AS publisher_name,
    p.black_flag"""


def _gating(stage: str) -> str:
    # An outside reset revives a parked (skipped / gave up) document, but never skips the
    # wait before a retry: with the request flags still set, a failing document would
    # otherwise be picked up on every run.  The stage itself is a parameter (%(stage)s).
    revived = REVIVED_BY[stage]
    return f"""
        AND NOT EXISTS (
            SELECT 1 FROM document_stage s
             WHERE s.document_id = d.id AND s.stage = %(stage)s
               AND ((s.outcome IN ('skipped', 'gave_up') AND NOT ({revived}))
                    OR (s.outcome = 'failed' AND s.next_attempt_at > {NOW})))
        AND NOT EXISTS (
            SELECT 1 FROM document_claim c
             WHERE c.document_id = d.id AND c.expires_at > {NOW}
               AND c.owner IS DISTINCT FROM %(owner)s)"""


def ready_documents(
    conn: Db,
    stage: str,
    *,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    owner: str | None = None,
    safety_period_s: int = 7200,
) -> list[dict[str, Any]]:
    """Documents ready for ``stage``: previous stage done, own marker empty, not parked,
    not waiting for a retry, not claimed by somebody else."""
    where = READY[stage].format(now=NOW) + _gating(stage)
    if ids is not None:
        where += " AND d.id = ANY(%(ids)s)"
    sql = f"""
        SELECT {DOCUMENT_FIELDS}
          FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher
         WHERE {where}
         ORDER BY {ORDER.get(stage, "d.downloaded, d.id")}
    """
    if limit is not None:
        sql += " LIMIT %(limit)s"
    return conn.execute(
        sql,
        {
            "owner": owner,
            "ids": list(ids) if ids is not None else None,
            "limit": limit,
            "safety_period_s": safety_period_s,
            "stage": stage,
        },
    ).fetchall()


def unsettled_documents(
    conn: Db, stage: str, ids: Sequence[str], *, run_id: str, owner: str, safety_period_s: int
) -> list[dict[str, Any]]:
    """Of ``ids``, the documents still ready for ``stage`` (claims of ``owner`` aside) that
    got no outcome for it in ``run_id``: what a lost batch task left untouched."""
    ready = ready_documents(conn, stage, ids=ids, owner=owner, safety_period_s=safety_period_s)
    if not ready:
        return []
    done = {
        r["document_id"]
        for r in conn.execute(
            "SELECT document_id FROM document_stage WHERE stage = %s AND run_id = %s AND document_id = ANY(%s)",
            (stage, run_id, [d["id"] for d in ready]),
        )
    }
    return [d for d in ready if d["id"] not in done]


def count_ready(conn: Db, stage: str, *, safety_period_s: int = 7200) -> int:
    where = READY[stage].format(now=NOW) + _gating(stage)
    row = _one(
        conn.execute(
            f"SELECT count(*) AS n FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher WHERE {where}",
            {"owner": None, "safety_period_s": safety_period_s, "stage": stage},
        )
    )
    return int(row["n"])


def claim(conn: Db, ids: Sequence[str], stage: str, owner: str, ttl_s: int) -> list[str]:
    """Lease ``ids`` to ``owner``; returns the ids actually leased (free or expired or ours)."""
    if not ids:
        return []
    rows = conn.execute(
        f"""
        INSERT INTO document_claim AS c (document_id, stage, owner, claimed_at, expires_at)
        SELECT i, %(stage)s, %(owner)s, {NOW}, {NOW} + make_interval(secs => %(ttl)s)
          FROM unnest(%(ids)s::varchar[]) AS i
         WHERE EXISTS (SELECT 1 FROM document d WHERE d.id = i)
        ON CONFLICT (document_id) DO UPDATE
           SET stage = EXCLUDED.stage, owner = EXCLUDED.owner,
               claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at
         WHERE c.expires_at <= EXCLUDED.claimed_at OR c.owner = EXCLUDED.owner
        RETURNING document_id
        """,
        {"ids": list(ids), "stage": stage, "owner": owner, "ttl": ttl_s},
    ).fetchall()
    return [r["document_id"] for r in rows]


def release(conn: Db, ids: Sequence[str], owner: str) -> None:
    conn.execute("DELETE FROM document_claim WHERE document_id = ANY(%s) AND owner = %s", (list(ids), owner))


START_COLUMN = {
    "validate": None,
    "download": None,
    "clean": "clean_start",
    "flatten": "flatten_start",
    "lakify": "lakify_start",
    "index": "solrize_start",
}


def mark_started(conn: Db, stage: str, docs: Sequence[dict[str, Any]]) -> None:
    column = START_COLUMN[stage]
    if not column or not docs:
        return
    conn.execute(
        f"""UPDATE document d SET {column} = {NOW}
              FROM unnest(%s::varchar[], %s::varchar[]) AS x(id, hash)
             WHERE d.id = x.id AND d.hash = x.hash""",
        ([d["id"] for d in docs], [d["hash"] for d in docs]),
    )


# ---------------------------------------------------------------------------------------
# outcomes
# ---------------------------------------------------------------------------------------


def record_outcomes(
    conn: Db,
    stage: str,
    outcomes: Iterable[dict[str, Any]],
    *,
    run_id: str | None,
    max_attempts: int,
    base_delay_s: int,
    max_delay_s: int,
) -> None:
    """Upsert one ``document_stage`` row per outcome.

    Each outcome dict has ``document_id``, ``hash`` (the version that was processed),
    ``status`` (ok/skipped/failed), ``code``, ``message`` and ``retryable``.  A failure
    that is not retryable, or that used up ``max_attempts``, becomes ``gave_up``; other
    failures wait ``base_delay_s * 2^(attempts-1)`` (capped) before the next try.
    Rows for a document whose hash changed meanwhile are not written.
    """
    rows = [
        {
            "id": o["document_id"],
            "hash": o["hash"],
            "stage": stage,
            "status": o["status"],
            "code": o.get("code"),
            "message": (o.get("message") or "")[:4000] or None,
            "retryable": bool(o.get("retryable")),
            "run": run_id,
            "max": max_attempts,
            "base": base_delay_s,
            "cap": max_delay_s,
        }
        for o in outcomes
    ]
    if not rows:
        return
    attempts_new = "CASE WHEN s.outcome = 'failed' THEN s.attempts + 1 ELSE 1 END"
    with conn.cursor() as cur:
        cur.executemany(
            f"""
            WITH o AS (
                SELECT %(id)s::varchar AS id, %(hash)s::varchar AS hash, %(stage)s::varchar AS stage,
                       %(status)s::varchar AS status, %(code)s::varchar AS code, %(message)s::text AS message,
                       %(retryable)s::boolean AS retryable, %(run)s::varchar AS run, %(max)s::int AS max_attempts,
                       %(base)s::float8 AS base, %(cap)s::float8 AS cap
            )
            INSERT INTO document_stage AS s (document_id, stage, outcome, code, message, attempts,
                                             first_attempt_at, last_attempt_at, next_attempt_at, run_id)
            SELECT o.id, o.stage,
                   CASE WHEN o.status = 'failed' AND (NOT o.retryable OR o.max_attempts <= 1)
                        THEN 'gave_up' ELSE o.status END,
                   o.code, o.message, 1, {NOW}, {NOW},
                   CASE WHEN o.status = 'failed' THEN {NOW} + make_interval(secs => o.base) END,
                   o.run
              FROM o
             WHERE EXISTS (SELECT 1 FROM document d WHERE d.id = o.id AND d.hash = o.hash)
            ON CONFLICT (document_id, stage) DO UPDATE SET
                outcome = CASE WHEN %(status)s::varchar = 'failed'
                                    AND (NOT %(retryable)s::boolean OR {attempts_new} >= %(max)s::int)
                               THEN 'gave_up' ELSE %(status)s::varchar END,
                code = EXCLUDED.code,
                message = EXCLUDED.message,
                attempts = CASE WHEN %(status)s::varchar = 'failed' THEN {attempts_new} ELSE 1 END,
                first_attempt_at = CASE WHEN s.outcome = 'failed' THEN s.first_attempt_at
                                        ELSE EXCLUDED.first_attempt_at END,
                last_attempt_at = EXCLUDED.last_attempt_at,
                next_attempt_at = CASE WHEN %(status)s::varchar = 'failed'
                    THEN {NOW} + make_interval(secs => LEAST(%(cap)s::float8,
                                  %(base)s::float8 * power(2, {attempts_new} - 1)))
                    END,
                run_id = EXCLUDED.run_id
            """,
            rows,
        )


def stage_rows(conn: Db, document_id: str) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM document_stage WHERE document_id = %s ORDER BY stage", (document_id,)).fetchall()


# --- per-stage document columns (reference semantics) ----------------------------------


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


def latest_report_for_hash(conn: Db, hash_: str) -> dict[str, Any] | None:
    """The newest stored report for identical content, to reuse instead of re-validating."""
    return conn.execute(
        "SELECT id, valid, report FROM validation WHERE document_hash = %s ORDER BY id DESC LIMIT 1",
        (hash_,),
    ).fetchone()


def latest_reports_for_hashes(conn: Db, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Content hash → its newest stored report's ``id`` and ``valid`` (not the report itself),
    for a whole batch in one query (index ``validation_document_hash_id``)."""
    rows = conn.execute(
        """SELECT DISTINCT ON (document_hash) document_hash, id, valid FROM validation
            WHERE document_hash = ANY(%s) ORDER BY document_hash, id DESC""",
        (list(hashes),),
    ).fetchall()
    return {r["document_hash"]: r for r in rows}


def validation_reports(conn: Db, validation_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Validation id → ``id, valid, report, created`` for a whole batch in one query."""
    rows = conn.execute(
        "SELECT id, valid, report, created FROM validation WHERE id = ANY(%s)", (list(validation_ids),)
    ).fetchall()
    return {int(r["id"]): r for r in rows}


def set_schema_result(conn: Db, document_id: str, hash_: str, *, valid: bool | None, api_error: int | None) -> None:
    conn.execute(
        f"""UPDATE document SET validation_request = {NOW},
               file_schema_valid = COALESCE(%s, file_schema_valid),
               validation_api_error = %s
             WHERE id = %s AND hash = %s""",
        (valid, api_error, document_id, hash_),
    )


def save_validation(
    conn: Db,
    doc: dict[str, Any],
    report: dict[str, Any],
    *,
    api_error: int | None,
    schema_valid: bool | None = None,
) -> int | None:
    """Append a ``validation`` row and point the document at it (one statement, as the
    reference).  Returns the new id, or None when the document changed meanwhile."""
    row = conn.execute(
        f"""
        WITH current AS (
            SELECT d.id, d.hash, d.url, d.publisher, p.name AS publisher_name
              FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher
             WHERE d.id = %(id)s AND d.hash = %(hash)s
        ), inserted AS (
            INSERT INTO validation (document_id, document_hash, document_url, created, valid, report,
                                    publisher, publisher_name)
            SELECT id, hash, url, {NOW}, %(valid)s, %(report)s, publisher, publisher_name FROM current
            RETURNING id
        )
        UPDATE document SET validation = inserted.id, regenerate_validation_report = false,
               validation_request = {NOW}, validation_api_error = %(api_error)s,
               file_schema_valid = COALESCE(%(schema_valid)s, file_schema_valid)
          FROM inserted WHERE document.id = %(id)s
        RETURNING inserted.id
        """,
        {
            "id": doc["id"],
            "hash": doc["hash"],
            "valid": bool(report.get("valid")),
            "report": Jsonb(report),
            "api_error": api_error,
            "schema_valid": schema_valid,
        },
    ).fetchone()
    return None if row is None else int(row["id"])


def reuse_validation(conn: Db, doc: dict[str, Any], validation_id: int, schema_valid: bool | None) -> None:
    conn.execute(
        f"""UPDATE document SET validation = %s, regenerate_validation_report = false,
               validation_request = {NOW}, file_schema_valid = COALESCE(%s, file_schema_valid)
             WHERE id = %s AND hash = %s""",
        (validation_id, schema_valid, doc["id"], doc["hash"]),
    )


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


# ---------------------------------------------------------------------------------------
# publisher safety check
# ---------------------------------------------------------------------------------------


def flag_publishers(conn: Db, threshold: int, period_s: int) -> list[str]:
    """Flag publishers with more than ``threshold`` schema-invalid documents downloaded in
    the last ``period_s`` seconds.  Returns the org ids flagged now (new or refreshed)."""
    rows = conn.execute(
        f"""
        UPDATE publisher SET black_flag = {NOW}
         WHERE org_id IN (
            SELECT publisher FROM document
             WHERE file_schema_valid = false
               AND downloaded > {NOW} - make_interval(secs => %s)
             GROUP BY publisher HAVING count(*) > %s)
        RETURNING org_id
        """,
        (period_s, threshold),
    ).fetchall()
    return [r["org_id"] for r in rows]


def publishers_to_notify(conn: Db) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT org_id, name, title, black_flag FROM publisher
            WHERE black_flag IS NOT NULL AND black_flag_notified IS NULL ORDER BY org_id"""
    ).fetchall()


def mark_notified(conn: Db, org_id: str) -> None:
    conn.execute("UPDATE publisher SET black_flag_notified = true WHERE org_id = %s", (org_id,))


def unflag_publisher(conn: Db, publisher: str) -> list[str]:
    """Unflag by org id or short name; returns the org ids unflagged."""
    rows = conn.execute(
        """UPDATE publisher SET black_flag = NULL, black_flag_notified = NULL
            WHERE (org_id = %(p)s OR name = %(p)s) AND black_flag IS NOT NULL
           RETURNING org_id""",
        {"p": publisher},
    ).fetchall()
    return [r["org_id"] for r in rows]


def flagged_publishers(conn: Db) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT org_id, name, black_flag, black_flag_notified FROM publisher WHERE black_flag IS NOT NULL"
    ).fetchall()


# ---------------------------------------------------------------------------------------
# ad-hoc validation (the table validator-services owns)
# ---------------------------------------------------------------------------------------


def save_adhoc_validation(conn: Db, row: dict[str, Any]) -> int:
    params = {
        "guid": None,
        "filename": None,
        "user_email": None,
        "session_id": None,
        "validation_api_error": None,
        "valid": None,
        "report": None,
        **row,
    }
    if params["report"] is not None:
        params["report"] = Jsonb(params["report"])
    result = _one(
        conn.execute(
            f"""INSERT INTO adhoc_validation (guid, filename, user_email, session_id, created, validated,
                                          validation_api_error, valid, report)
            VALUES (%(guid)s, %(filename)s, %(user_email)s, %(session_id)s, {NOW},
                    CASE WHEN %(report)s IS NULL THEN NULL ELSE {NOW} END,
                    %(validation_api_error)s, %(valid)s, %(report)s)
            RETURNING id""",
            params,
        )
    )
    return int(result["id"])


# ---------------------------------------------------------------------------------------
# telemetry, status and operator resets
# ---------------------------------------------------------------------------------------


def record_telemetry(conn: Db, row: dict[str, Any]) -> None:
    """Upsert one (run, stage, batch) row.

    Another try of the same batch adds to it: each try settles the documents the earlier
    ones left, so the row ends with every document of the batch counted once (the earlier
    tries' unsettled documents are this try's ``documents_in``)."""
    conn.execute(
        """
        INSERT INTO run_stage_telemetry AS t (run_id, dag_id, stage, batch, started_at, finished_at,
            documents_in, documents_ok, documents_skipped, documents_failed, activities, bytes)
        VALUES (%(run_id)s, %(dag_id)s, %(stage)s, %(batch)s, %(started_at)s, %(finished_at)s,
            %(documents_in)s, %(documents_ok)s, %(documents_skipped)s, %(documents_failed)s,
            %(activities)s, %(bytes)s)
        ON CONFLICT (run_id, stage, batch) DO UPDATE SET
            started_at = LEAST(t.started_at, EXCLUDED.started_at),
            finished_at = GREATEST(t.finished_at, EXCLUDED.finished_at),
            documents_in = t.documents_ok + t.documents_skipped + t.documents_failed + EXCLUDED.documents_in,
            documents_ok = t.documents_ok + EXCLUDED.documents_ok,
            documents_skipped = t.documents_skipped + EXCLUDED.documents_skipped,
            documents_failed = t.documents_failed + EXCLUDED.documents_failed,
            activities = t.activities + EXCLUDED.activities, bytes = t.bytes + EXCLUDED.bytes
        """,
        {
            "batch": "",
            "activities": 0,
            "bytes": 0,
            "documents_in": 0,
            "documents_ok": 0,
            "documents_skipped": 0,
            "documents_failed": 0,
            **row,
        },
    )


def run_summary(conn: Db, run_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        """
        SELECT stage, count(*) AS batches, min(started_at) AS started_at, max(finished_at) AS finished_at,
               sum(documents_in) AS documents_in, sum(documents_ok) AS documents_ok,
               sum(documents_skipped) AS documents_skipped, sum(documents_failed) AS documents_failed,
               sum(activities) AS activities, sum(bytes) AS bytes,
               extract(epoch FROM max(finished_at) - min(started_at)) AS duration_s
          FROM run_stage_telemetry WHERE run_id = %s GROUP BY stage
        """,
        (run_id,),
    ).fetchall()


def stage_backlogs(conn: Db, *, safety_period_s: int) -> dict[str, int]:
    return {stage: count_ready(conn, stage, safety_period_s=safety_period_s) for stage in STAGES}


def parked_counts(conn: Db) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT stage, outcome, code, count(*) AS n FROM document_stage
            WHERE outcome IN ('skipped', 'gave_up', 'failed') GROUP BY stage, outcome, code
            ORDER BY stage, outcome, code"""
    ).fetchall()


def find_documents(
    conn: Db,
    *,
    ids_or_names: Sequence[str] = (),
    publishers: Sequence[str] = (),
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Documents (with publisher name and stage rows) selected by id/name and/or publisher
    org id/name.  With no selector: all documents (paged)."""
    conds = []
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if ids_or_names:
        conds.append("(d.id = ANY(%(docs)s) OR d.name = ANY(%(docs)s))")
        params["docs"] = list(ids_or_names)
    if publishers:
        conds.append("(d.publisher = ANY(%(pubs)s) OR p.name = ANY(%(pubs)s))")
        params["pubs"] = list(publishers)
    where = " AND ".join(conds) if conds else "true"
    sql = f"""
        SELECT d.*, p.name AS publisher_name, p.black_flag,
               v.valid AS report_valid, v.created AS validated_at,
               v.report->>'fileType' AS file_type, v.report->>'iatiVersion' AS iati_version,
               v.report->'summary' AS report_summary,
               COALESCE((SELECT json_agg(json_build_object(
                    'stage', s.stage, 'outcome', s.outcome, 'code', s.code, 'message', s.message,
                    'attempts', s.attempts, 'last_attempt_at', s.last_attempt_at,
                    'next_attempt_at', s.next_attempt_at) ORDER BY s.stage)
                  FROM document_stage s WHERE s.document_id = d.id), '[]') AS stages
          FROM document d
          LEFT JOIN publisher p ON p.org_id = d.publisher
          LEFT JOIN validation v ON v.id = d.validation
         WHERE {where}
         ORDER BY p.name NULLS LAST, d.name, d.id
         LIMIT %(limit)s OFFSET %(offset)s
    """
    return conn.execute(sql, params).fetchall()


# Operator resets: what each "from stage" clears (the stage's markers and everything after).
RESET_FROM = {
    "download": [
        "downloaded",
        "download_error",
        "source_etag",
        "source_last_modified",
        "source_bytes",
        "source_encoding",
    ],
    "validate": ["validation", "validation_request", "validation_api_error", "file_schema_valid"],
    "clean": ["clean_start", "clean_end", "clean_error"],
    "flatten": ["flatten_start", "flatten_end", "flatten_api_error", "flattened_activities", "activity_count"],
    "lakify": ["lakify_start", "lakify_end", "lakify_error"],
    "index": ["solrize_start", "solrize_end", "solr_api_error"],
}


def _reset_columns(from_stage: str) -> list[str]:
    """What an operator reset from ``from_stage`` clears: its columns and every later stage's."""
    later = stages_from(from_stage)
    return [column for stage, columns in RESET_FROM.items() if stage in later for column in columns]


def reset_documents(conn: Db, ids: Sequence[str], from_stage: str) -> int:
    """Reset ``from_stage`` and every later stage for ``ids`` (operator re-run)."""
    stages = stages_from(from_stage)
    sets = ", ".join(f"{c} = NULL" for c in _reset_columns(from_stage))
    updated = conn.execute(f"UPDATE document SET {sets} WHERE id = ANY(%s)", (list(ids),)).rowcount
    conn.execute(
        "DELETE FROM document_stage WHERE document_id = ANY(%s) AND stage = ANY(%s)",
        (list(ids), list(stages)),
    )
    return updated


# ---------------------------------------------------------------------------------------
# registry state (ETag of the last synced index)
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# reconciliation
# ---------------------------------------------------------------------------------------


def document_hashes(conn: Db) -> dict[str, str]:
    """Every document id → its current hash."""
    return {r["id"]: r["hash"] for r in conn.execute("SELECT id, hash FROM document").fetchall()}


def delete_expired_claims(conn: Db) -> int:
    return conn.execute(f"DELETE FROM document_claim WHERE expires_at <= {NOW}").rowcount


def reset_preview(conn: Db, ids: Sequence[str], from_stage: str) -> list[dict[str, Any]]:
    """The columns an operator reset would clear, with their current values (dry run)."""
    stages = stages_from(from_stage)
    columns = _reset_columns(from_stage)
    rows = conn.execute(
        f"SELECT id, name, {', '.join(columns)} FROM document WHERE id = ANY(%s) ORDER BY name, id", (list(ids),)
    ).fetchall()
    parked = conn.execute(
        "SELECT document_id, stage, outcome, code FROM document_stage WHERE document_id = ANY(%s) AND stage = ANY(%s)",
        (list(ids), list(stages)),
    ).fetchall()
    by_doc: dict[str, list[str]] = {}
    for p in parked:
        by_doc.setdefault(p["document_id"], []).append(f"{p['stage']}:{p['outcome']}:{p['code']}")
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "would_clear": {c: r[c] for c in columns if r[c] is not None},
            "would_forget": by_doc.get(r["id"], []),
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------------------
# per-dataset status (the status page, its API and `refresher status`)
# ---------------------------------------------------------------------------------------

# The furthest a document got, from the reference's markers; "parked" when a stage row says
# skipped or gave up (and no other service has reset that stage since).
DOCUMENT_STATES = (
    "pending_download",
    "downloaded",
    "validated",
    "cleaned",
    "flattened",
    "lakified",
    "indexed",
    "parked",
)


def _parked_stage_sql() -> str:
    revived = " ".join(f"WHEN '{stage}' THEN ({cond})" for stage, cond in REVIVED_BY.items())
    return f"""(SELECT s.stage FROM document_stage s
                 WHERE s.document_id = d.id AND s.outcome IN ('skipped', 'gave_up')
                   AND NOT (CASE s.stage {revived} ELSE false END)
                 ORDER BY s.last_attempt_at DESC NULLS LAST, s.stage LIMIT 1)"""


# Every document column but ``flattened_activities`` (large, and not status).
_STATUS_COLUMNS = """d.id, d.name, d.hash, d.url, d.cached_dataset_url, d.publisher, d.first_seen, d.last_seen,
    d.modified, d.downloaded, d.download_error, d.validation_request, d.validation_api_error, d.validation,
    d.regenerate_validation_report, d.file_schema_valid, d.clean_start, d.clean_end, d.clean_error,
    d.flatten_start, d.flatten_end, d.flatten_api_error, d.lakify_start, d.lakify_end, d.lakify_error,
    d.solrize_start, d.solrize_end, d.last_solrize_end, d.solr_api_error, d.solrize_reindex, d.solr_indexed_hash,
    d.solr_activity_count, d.activity_count, d.source_bytes, d.source_encoding"""

_STATE_SQL = """CASE
        WHEN parked_stage IS NOT NULL THEN 'parked'
        WHEN solrize_end IS NOT NULL THEN 'indexed'
        WHEN flatten_end IS NOT NULL AND lakify_end IS NOT NULL THEN 'lakified'
        WHEN flatten_end IS NOT NULL THEN 'flattened'
        WHEN clean_end IS NOT NULL THEN 'cleaned'
        WHEN validation IS NOT NULL THEN 'validated'
        WHEN downloaded IS NOT NULL THEN 'downloaded'
        ELSE 'pending_download' END"""


def _status_filters(keys: Sequence[str], publisher: str | None, query: str | None) -> tuple[str, dict[str, Any]]:
    conds: list[str] = []
    params: dict[str, Any] = {}
    if keys:
        conds.append("(d.id = ANY(%(keys)s) OR d.name = ANY(%(keys)s))")
        params["keys"] = list(keys)
    if publisher:
        conds.append("(lower(d.publisher) = lower(%(publisher)s) OR lower(p.name) = lower(%(publisher)s))")
        params["publisher"] = publisher
    if query:
        conds.append("(d.name ILIKE %(query)s OR d.id ILIKE %(query)s)")
        params["query"] = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return (" AND ".join(conds) or "true"), params


def document_status_rows(
    conn: Db,
    *,
    keys: Sequence[str] = (),
    publisher: str | None = None,
    state: str | None = None,
    query: str | None = None,
    limit: int | None = 50,
    offset: int = 0,
    safety_period_s: int = 7200,
) -> list[dict[str, Any]]:
    """Documents with everything the status page explains: the reference's columns, the
    publisher, the validation report's summary and activity counts, ``state`` (one of
    :data:`DOCUMENT_STATES`), ``parked_stage``, the ``stages`` rows, ``total`` (matching rows
    before paging) and ``checked_at`` (the database's now).

    :param keys: dataset ids or names (any match).
    :param publisher: publisher org id or short name (case-insensitive).
    :param state: only documents in this state.
    :param query: a substring of the dataset name or id.
    """
    where, params = _status_filters(keys, publisher, query)
    if state is not None:
        if state not in DOCUMENT_STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(DOCUMENT_STATES)}")
        params["state"] = state
    params.update({"limit": limit, "offset": offset, "safety": safety_period_s})
    # Page first on cheap columns, then read the (possibly large) reports of that page only.
    sql = f"""
        WITH base AS (
            SELECT {_STATUS_COLUMNS}, p.name AS publisher_name, p.title AS publisher_title, p.black_flag,
                   p.black_flag_notified, {_parked_stage_sql()} AS parked_stage
              FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher
             WHERE {where}
        ), staged AS (
            SELECT base.*, {_STATE_SQL} AS state FROM base
        ), page AS (
            SELECT staged.*, count(*) OVER () AS total FROM staged
             WHERE %(state)s::varchar IS NULL OR state = %(state)s
             ORDER BY publisher_name NULLS LAST, name, id
             LIMIT %(limit)s OFFSET %(offset)s
        )
        SELECT page.*, {NOW} AS checked_at,
               page.downloaded + make_interval(secs => %(safety)s) AS safety_period_ends,
               v.created AS validated, v.valid AS report_valid,
               v.report->>'fileType' AS file_type, v.report->>'iatiVersion' AS iati_version,
               v.report->'summary' AS report_summary,
               CASE WHEN jsonb_typeof(v.report->'iati-activities') = 'array'
                    THEN jsonb_array_length(v.report->'iati-activities') END AS report_activities,
               CASE WHEN jsonb_typeof(v.report->'iati-activities') = 'array'
                    THEN (SELECT count(*) FROM jsonb_array_elements(v.report->'iati-activities') a
                           WHERE a->>'valid' = 'true') END AS report_valid_activities,
               COALESCE((SELECT json_agg(json_build_object(
                    'stage', s.stage, 'outcome', s.outcome, 'code', s.code, 'message', s.message,
                    'attempts', s.attempts, 'first_attempt_at', s.first_attempt_at,
                    'last_attempt_at', s.last_attempt_at, 'next_attempt_at', s.next_attempt_at,
                    'run_id', s.run_id) ORDER BY s.stage)
                  FROM document_stage s WHERE s.document_id = page.id), '[]') AS stages
          FROM page LEFT JOIN validation v ON v.id = page.validation
         ORDER BY page.publisher_name NULLS LAST, page.name, page.id
    """
    params.setdefault("state", None)
    return conn.execute(sql, params).fetchall()


def document_state_counts(conn: Db, *, publisher: str | None = None, query: str | None = None) -> dict[str, int]:
    """How many documents are in each state (every state present, zeros included)."""
    where, params = _status_filters((), publisher, query)
    rows = conn.execute(
        f"""
        WITH base AS (
            SELECT d.solrize_end, d.flatten_end, d.lakify_end, d.clean_end, d.validation, d.downloaded,
                   {_parked_stage_sql()} AS parked_stage
              FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher
             WHERE {where}
        )
        SELECT {_STATE_SQL} AS state, count(*) AS n FROM base GROUP BY 1
        """,
        params,
    ).fetchall()
    counts = dict.fromkeys(DOCUMENT_STATES, 0)
    counts.update({r["state"]: int(r["n"]) for r in rows})
    return counts


def latest_run_id(conn: Db, dag_id: str | None = None) -> str | None:
    """The run whose telemetry finished last (optionally of one DAG), or None."""
    row = conn.execute(
        """SELECT run_id FROM run_stage_telemetry
            WHERE %(dag)s::varchar IS NULL OR dag_id = %(dag)s
            ORDER BY finished_at DESC LIMIT 1""",
        {"dag": dag_id},
    ).fetchone()
    return None if row is None else str(row["run_id"])


# ---------------------------------------------------------------------------------------
# requests from other services that ended for good
# ---------------------------------------------------------------------------------------

# The flag another IATI service sets to ask for a stage again (see REVIVED_BY).
REQUEST_FLAGS = {"validate": "regenerate_validation_report", "index": "solrize_reindex"}


def settle_request(conn: Db, stage: str, document_id: str, hash_: str) -> None:
    """Clear the request flag of a document whose ``stage`` just ended for good.

    When the stage row says ``skipped`` or ``gave_up``, the request was answered: the
    document stays parked, visibly, instead of being revived by its own flag on every run.
    Other stages (and documents still retrying) are left alone.
    """
    column = REQUEST_FLAGS.get(stage)
    if column is None:
        return
    conn.execute(
        f"""UPDATE document d SET {column} = false
             WHERE d.id = %(id)s AND d.hash = %(hash)s AND d.{column}
               AND EXISTS (SELECT 1 FROM document_stage s
                            WHERE s.document_id = d.id AND s.stage = %(stage)s
                              AND s.outcome IN ('skipped', 'gave_up'))""",
        {"id": document_id, "hash": hash_, "stage": stage},
    )


def renew_claims(conn: Db, ids: Sequence[str], owner: str, ttl_s: int) -> int:
    """Extend ``owner``'s leases on ``ids`` by ``ttl_s`` from now; returns how many it still held."""
    if not ids:
        return 0
    return conn.execute(
        f"""UPDATE document_claim SET expires_at = {NOW} + make_interval(secs => %(ttl)s)
             WHERE document_id = ANY(%(ids)s) AND owner = %(owner)s""",
        {"ids": list(ids), "owner": owner, "ttl": ttl_s},
    ).rowcount
