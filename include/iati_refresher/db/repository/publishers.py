"""Publisher safety: flagging publishers that flood the pipeline with invalid files."""

from __future__ import annotations

from typing import Any

from iati_refresher.db.repository.common import NOW
from iati_refresher.db.types import Db


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
