"""Stage selection and claims: which documents are ready for a stage, and their leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iati_refresher.db.repository.common import NOW, one_row
from iati_refresher.db.repository.stage_sql import ORDER, READY, REVIVED_BY, START_COLUMN
from iati_refresher.db.types import Db
from iati_refresher.stage_specs import STAGES

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
    row = one_row(
        conn.execute(
            f"SELECT count(*) AS n FROM document d LEFT JOIN publisher p ON p.org_id = d.publisher WHERE {where}",
            {"owner": None, "safety_period_s": safety_period_s, "stage": stage},
        )
    )
    return int(row["n"])


def stage_backlogs(conn: Db, *, safety_period_s: int) -> dict[str, int]:
    return {stage: count_ready(conn, stage, safety_period_s=safety_period_s) for stage in STAGES}


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


def renew_claims(conn: Db, ids: Sequence[str], owner: str, ttl_s: int) -> int:
    """Extend ``owner``'s leases on ``ids`` by ``ttl_s`` from now; returns how many it still held."""
    if not ids:
        return 0
    return conn.execute(
        f"""UPDATE document_claim SET expires_at = {NOW} + make_interval(secs => %(ttl)s)
             WHERE document_id = ANY(%(ids)s) AND owner = %(owner)s""",
        {"ids": list(ids), "owner": owner, "ttl": ttl_s},
    ).rowcount


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
