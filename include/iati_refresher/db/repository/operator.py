"""Operator work: finding documents, re-running stages, reconciliation's view of the documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iati_refresher.db.repository.common import NOW
from iati_refresher.db.repository.stage_sql import RESET_FROM
from iati_refresher.db.types import Db
from iati_refresher.stage_specs import stages_from


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


def document_hashes(conn: Db) -> dict[str, str]:
    """Every document id → its current hash."""
    return {r["id"]: r["hash"] for r in conn.execute("SELECT id, hash FROM document").fetchall()}


def delete_expired_claims(conn: Db) -> int:
    return conn.execute(f"DELETE FROM document_claim WHERE expires_at <= {NOW}").rowcount
