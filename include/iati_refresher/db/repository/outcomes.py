"""Stage records: one outcome per document and stage, its retry rule, answered requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from iati_refresher.db.repository.common import NOW
from iati_refresher.db.repository.stage_sql import REQUEST_FLAGS
from iati_refresher.db.types import Db


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
