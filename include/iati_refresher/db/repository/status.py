"""Per-dataset status: the status page, its API and ``refresher status``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iati_refresher.db.repository.common import NOW
from iati_refresher.db.repository.stage_sql import REVIVED_BY
from iati_refresher.db.types import Db

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
