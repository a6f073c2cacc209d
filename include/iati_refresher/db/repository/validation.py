"""Validation reports: stored, reused for identical content, looked up per batch; ad-hoc ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from iati_refresher.db.repository.common import NOW, one_row
from iati_refresher.db.types import Db


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
    result = one_row(
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
