"""Per-run telemetry and what the summary reads."""

from __future__ import annotations

from typing import Any

from iati_refresher.db.types import Db


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


def parked_counts(conn: Db) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT stage, outcome, code, count(*) AS n FROM document_stage
            WHERE outcome IN ('skipped', 'gave_up', 'failed') GROUP BY stage, outcome, code
            ORDER BY stage, outcome, code"""
    ).fetchall()


def latest_run_id(conn: Db, dag_id: str | None = None) -> str | None:
    """The run whose telemetry finished last (optionally of one DAG), or None."""
    row = conn.execute(
        """SELECT run_id FROM run_stage_telemetry
            WHERE %(dag)s::varchar IS NULL OR dag_id = %(dag)s
            ORDER BY finished_at DESC LIMIT 1""",
        {"dag": dag_id},
    ).fetchone()
    return None if row is None else str(row["run_id"])
