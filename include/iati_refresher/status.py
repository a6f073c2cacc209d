"""Where each dataset is in the pipeline, and why — in words a publisher understands.

One explanation serves three readers: ``refresher status DATASET`` (the CLI), the
"IATI datasets" page in the Airflow UI and its JSON API (``plugins/iati_status_plugin.py``).

Per document it gives:

* ``state``: the furthest stage reached (``pending_download`` … ``indexed``) or ``parked``
  (a stage skipped it by rule or gave up; see :data:`repository.DOCUMENT_STATES`);
* ``availability`` in the IATI datastore, with validator-web's vocabulary: ``Yes``,
  ``Partial`` (only the valid activities of a schema-invalid file), ``Old version`` (the
  previous version is still searchable while this one is processed or excluded), ``No``,
  ``Pending`` and ``N/A`` (organisation files: the datastore holds activities only);
* ``reasons``: why the dataset (or some of its activities) is not in the datastore, or what
  it waits for — the first one is the headline ``reason``;
* the timeline, the reference's error columns, our per-stage rows and the last error.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db
from iati_refresher.settings import Settings, get_settings
from iati_refresher.stage_specs import STAGE_WORDS, STAGES

STATES = repo.DOCUMENT_STATES
STATE_LABELS = {
    "pending_download": "Waiting for download",
    "downloaded": "Downloaded",
    "validated": "Validated",
    "cleaned": "Cleaned",
    "flattened": "Flattened",
    "lakified": "In the activity lake",
    "indexed": "Indexed",
    "parked": "Parked",
}
AVAILABILITY = ("Yes", "Partial", "Old version", "No", "Pending", "Indexing not configured", "N/A")
NOT_INDEXED_HERE = (
    "indexing is not configured in this deployment (no 'solr' connection): the activities are "
    "in the activity lake, but nothing is searchable"
)
SUPPORTED_VERSIONS = ("2.01", "2.02", "2.03")
# The reference's error columns, in pipeline order (other IATI services read them).
ERROR_COLUMNS = (
    "download_error",
    "validation_api_error",
    "clean_error",
    "flatten_api_error",
    "lakify_error",
    "solr_api_error",
)
TIMESTAMP_COLUMNS = (
    "first_seen",
    "modified",
    "downloaded",
    "validated",
    "clean_end",
    "flatten_end",
    "lakify_end",
    "solrize_end",
    "last_solrize_end",
)
TIMESTAMP_LABELS = {
    "first_seen": "first seen",
    "modified": "changed",
    "downloaded": "downloaded",
    "validated": "validated",
    "clean_end": "cleaned",
    "flatten_end": "flattened",
    "lakify_end": "lakified",
    "solrize_end": "indexed",
    "last_solrize_end": "last indexed",
}


# ---------------------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------------------


def dataset_status(conn: Db, key: str, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The status of the dataset(s) whose id or name is ``key`` (usually one; none if unknown).

    :param conn: an open refresher database connection (dict rows).
    :param key: a dataset id (registry UUID) or name.
    :return: one :func:`explain` dict per matching document.
    """
    settings = settings or get_settings()
    rows = repo.document_status_rows(conn, keys=[key], limit=None, safety_period_s=settings.safety_check_period_s)
    return [explain(row, settings) for row in rows]


def list_datasets(
    conn: Db,
    *,
    publisher: str | None = None,
    state: str | None = None,
    query: str | None = None,
    limit: int = 50,
    offset: int = 0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One page of datasets for the status page.

    :param publisher: publisher org id or short name (case-insensitive exact match).
    :param state: one of :data:`STATES`.
    :param query: a substring of the dataset name or id.
    :return: ``{"total", "limit", "offset", "items"}`` with :func:`explain` dicts as items.
    :raises ValueError: for an unknown ``state``.
    """
    settings = settings or get_settings()
    rows = repo.document_status_rows(
        conn,
        publisher=publisher,
        state=state,
        query=query,
        limit=limit,
        offset=offset,
        safety_period_s=settings.safety_check_period_s,
    )
    total = int(rows[0]["total"]) if rows else 0
    if not rows and offset:
        # Past the last page: still report how many there are.
        total = sum(
            repo.document_state_counts(conn, publisher=publisher, query=query)[s]
            for s in ([state] if state else STATES)
        )
    return {"total": total, "limit": limit, "offset": offset, "items": [explain(r, settings) for r in rows]}


# ---------------------------------------------------------------------------------------
# explanation
# ---------------------------------------------------------------------------------------


def index_configured(*, ttl_s: float = 60.0) -> bool:
    """Whether this deployment has a Solr connection (cached for ``ttl_s``: a page explains many rows)."""
    import time

    from iati_refresher.connections import SOLR, get_connection

    now = time.monotonic()
    if _INDEX_CONFIGURED.get("until", 0.0) < now:
        _INDEX_CONFIGURED.update(value=get_connection(SOLR) is not None, until=now + ttl_s)
    return bool(_INDEX_CONFIGURED["value"])


_INDEX_CONFIGURED: dict[str, Any] = {}


def explain(row: dict[str, Any], settings: Settings | None = None, *, indexing: bool | None = None) -> dict[str, Any]:
    """Turn a :func:`repository.document_status_rows` row into the status of one dataset.

    :param indexing: whether Solr is configured (default: :func:`index_configured`); without
        it a dataset that reached the lake is "Indexing not configured", not "Pending" forever.
    """
    settings = settings or get_settings()
    order = {stage: i for i, stage in enumerate(STAGES)}
    stages = sorted((dict(s) for s in (row.get("stages") or [])), key=lambda s: (order.get(s["stage"], 99), s["stage"]))
    for s in stages:
        for key in ("first_attempt_at", "last_attempt_at", "next_attempt_at"):
            s[key] = _as_datetime(s.get(key))
        if s["outcome"] != "failed":
            s["next_attempt_at"] = None  # only a failure waits for a next attempt; parked rows wait for a change
    report = _report_facts(row)
    reasons = _reasons(row, report, stages, settings)
    availability = _availability(row, report)
    if (
        availability == "Pending"
        and row["state"] == "lakified"
        and not (index_configured() if indexing is None else indexing)
    ):
        availability = "Indexing not configured"
        reasons = [NOT_INDEXED_HERE, *reasons]
    return {
        "id": row["id"],
        "name": row.get("name"),
        "publisher": row.get("publisher"),
        "publisher_name": row.get("publisher_name"),
        "publisher_title": row.get("publisher_title"),
        "publisher_flagged_at": row.get("black_flag"),
        "url": redact_url(row.get("url")),
        "cached_url": redact_url(row.get("cached_dataset_url")),
        "hash": row.get("hash"),
        "state": row["state"],
        "state_label": STATE_LABELS[row["state"]],
        "parked_stage": row.get("parked_stage"),
        "retrying": any(s["outcome"] == "failed" for s in stages),
        "availability": availability,
        "reason": reasons[0] if reasons else None,
        "reasons": reasons,
        "last_error": _last_error(stages),
        "errors": {c: row[c] for c in ERROR_COLUMNS if row.get(c) is not None},
        "timestamps": {c: row.get(c) for c in TIMESTAMP_COLUMNS},
        "validation": report,
        "activities": {
            "in_file": report["activities"] if report else None,
            "valid": report["valid_activities"] if report else None,
            "flattened": row.get("activity_count"),
            "indexed": row.get("solr_activity_count"),
        },
        "indexed_version": _indexed_version(row),
        "stages": stages,
    }


def _as_datetime(value: Any) -> Any:
    # Stage rows come through json_agg, so their timestamps arrive as ISO strings.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def redact_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part (publisher URLs sometimes carry one)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _report_facts(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("validation") is None:
        return None
    summary = row.get("report_summary") or {}
    return {
        "id": row["validation"],
        "valid": row.get("report_valid"),
        "file_type": row.get("file_type"),
        "iati_version": row.get("iati_version"),
        "summary": {k: summary.get(k) for k in ("critical", "error", "warning", "advisory") if k in summary},
        "activities": _int_or_none(row.get("report_activities")),
        "valid_activities": _int_or_none(row.get("report_valid_activities")),
    }


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _indexed_version(row: dict[str, Any]) -> str | None:
    indexed = row.get("solr_indexed_hash")
    if indexed and indexed != row.get("hash"):
        return "previous"
    if row.get("solrize_end") is not None or indexed:
        return "current"
    return None


def _excluded_by_report(report: dict[str, Any] | None) -> str | None:
    """The file-level rule that keeps the whole file out of the datastore, if any."""
    if report is None:
        return None
    version = report["iati_version"] or ""
    if report["file_type"] == "iati-organisations":
        return "organisation"
    if not report["file_type"]:
        return "not_iati"
    if version.startswith("1"):
        return "version_1x"
    if version and version not in SUPPORTED_VERSIONS:
        return "unsupported_version"
    if report["valid"] is False and report["valid_activities"] == 0:
        return "no_valid_activities"
    return None


def _availability(row: dict[str, Any], report: dict[str, Any] | None) -> str:
    if row.get("solrize_end") is not None:
        return "Partial" if report is not None and report["valid"] is False else "Yes"
    if _indexed_version(row) == "previous":
        return "Old version"
    excluded = _excluded_by_report(report)
    if excluded == "organisation":
        return "N/A"
    if excluded or row["state"] == "parked":
        return "No"
    return "Pending"


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def download_error_text(code: int, settings: Settings | None = None) -> str:
    """The reference's ``download_error`` code in words (see the download stage)."""
    if code == 0:
        return "the server could not be reached (connection refused, reset or timed out)"
    if code == 1:
        return "a secure (TLS/SSL) connection could not be made: check the server's certificate"
    if code == 2:
        return "its character encoding could not be read: it does not look like a text (XML) file"
    if code == 3:
        return "the URL is not supported: it must be a public http(s) address"
    if code == 4:
        return "the registry has no cached copy of it yet"
    if code == 413:
        limit = (settings or get_settings()).max_download_bytes // (1024 * 1024)
        return f"it is larger than the {limit} MB the refresher accepts"
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"the server answered HTTP {code}" + (f" ({phrase})" if phrase else "")


def _reasons(
    row: dict[str, Any], report: dict[str, Any] | None, stages: list[dict[str, Any]], settings: Settings
) -> list[str]:
    """Why the dataset is where it is, in the order a reader asks: the download, the wait for
    validation, the report, the content, our stages' records, what searchers see meanwhile."""
    excluded = _excluded_by_report(report)
    return [
        *_download_reasons(row, settings),
        *_validation_wait_reasons(row, report, settings),
        *_report_reasons(row, report, excluded),
        *_content_reasons(row),
        *_stage_reasons(row, stages, excluded, settings),
        *_search_reasons(row, excluded),
    ]


def _download_reasons(row: dict[str, Any], settings: Settings) -> list[str]:
    code = row.get("download_error")
    if row.get("downloaded") is None and code is not None:
        return [f"The file could not be downloaded: {download_error_text(int(code), settings)}."]
    return []


def _validation_wait_reasons(row: dict[str, Any], report: dict[str, Any] | None, settings: Settings) -> list[str]:
    """Waiting before (or unable to get) a full validation report."""
    if report is not None or row.get("downloaded") is None:
        return []
    reasons: list[str] = []
    if row.get("file_schema_valid") is False:
        ends = row.get("safety_period_ends")
        if row.get("black_flag") is not None:
            reasons.append(
                f"The publisher is paused since {_when(row['black_flag'])}: it published more than "
                f"{settings.safety_check_threshold} schema-invalid files within "
                f"{_hours(settings.safety_check_period_s)}. This file fails the IATI schema, so its "
                "activities are checked one by one only after the publisher is unflagged."
            )
        elif ends is not None and row.get("checked_at") is not None and ends > row["checked_at"]:
            reasons.append(
                "The file fails the IATI schema. Its valid activities will be checked after the "
                f"safety period, from {_when(ends)}."
            )
    api_error = row.get("validation_api_error")
    if api_error is not None:
        reasons.append(f"The IATI Validator could not check the file: {_validator_error_text(int(api_error))}.")
    return reasons


def _report_reasons(row: dict[str, Any], report: dict[str, Any] | None, excluded: str | None) -> list[str]:
    """What the validation report says about the whole file."""
    if report is None:
        return []
    reasons: list[str] = []
    critical = report["summary"].get("critical")
    critical_text = f" ({critical} critical error{'s' if critical != 1 else ''})" if critical else ""
    total, valid = report["activities"], report["valid_activities"]
    version = report["iati_version"] or ""
    if excluded == "organisation":
        reasons.append("This is an organisation file: the IATI datastore holds activity files only.")
    elif excluded == "not_iati":
        reasons.append(
            "This is not a readable IATI file: the validator found no <iati-activities> or "
            "<iati-organisations> root, or the XML could not be parsed."
        )
    elif excluded == "version_1x":
        reasons.append(f"The file uses IATI version {version}: version 1 files are no longer accepted.")
    elif excluded == "unsupported_version":
        reasons.append(
            f"The file uses IATI version {version}, which the datastore does not support "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})."
        )
    elif excluded == "no_valid_activities":
        reasons.append(
            f"The file fails the IATI schema{critical_text} and none of its {total} activities is valid: "
            "nothing from it can go to the datastore."
        )
    elif report["valid"] is False:
        if total is not None and valid is not None:
            reasons.append(
                f"The file fails the IATI schema{critical_text}: {valid} of {total} activities kept; "
                "the invalid ones are left out of the datastore."
            )
        else:
            reasons.append(f"The file fails the IATI schema{critical_text}.")
    if row.get("regenerate_validation_report"):
        reasons.append("A new validation report was requested; the file will be validated again.")
    return reasons


def _content_reasons(row: dict[str, Any]) -> list[str]:
    if row.get("flatten_end") is not None and row.get("activity_count") == 0:
        return ["The file contains no activities."]
    return []


def _stage_reasons(
    row: dict[str, Any], stages: list[dict[str, Any]], excluded: str | None, settings: Settings
) -> list[str]:
    """What our stages recorded: parked (skipped or gave up) and retries."""
    reasons: list[str] = []
    code = row.get("download_error")
    parked = {s["stage"]: s for s in stages}.get(row.get("parked_stage") or "")
    if parked is not None:
        where = STAGE_WORDS.get(parked["stage"], parked["stage"])
        message = parked.get("message") or parked.get("code") or "no detail recorded"
        again = "It is tried again when the publisher updates the file, or when an operator re-runs it."
        if parked["outcome"] == "gave_up" and parked["stage"] == "download" and code is not None:
            reasons.append(f"Gave up after {_attempts(parked['attempts'])}. {again}")
        elif parked["outcome"] == "gave_up":
            reasons.append(f"Gave up at {where} after {_attempts(parked['attempts'])}: {message}. {again}")
        elif not excluded and not (parked["stage"] == "download" and code is not None):
            reasons.append(f"Left out at {where}: {message}.")
    for s in stages:
        if s["outcome"] == "failed":
            reasons.append(
                f"{STAGE_WORDS.get(s['stage'], s['stage']).capitalize()} failed "
                f"(attempt {s['attempts']} of {settings.max_attempts}): {s.get('message') or s.get('code')}. "
                f"Next try after {_when(s['next_attempt_at'])}."
            )
    return reasons


def _search_reasons(row: dict[str, Any], excluded: str | None) -> list[str]:
    """What searchers see meanwhile."""
    reasons: list[str] = []
    if _indexed_version(row) == "previous":
        reasons.append(
            "The previous version of this file is still searchable in the datastore while this version "
            + ("is processed." if not (excluded or row["state"] == "parked") else "is left out (see above).")
        )
    if row.get("solrize_reindex") and row.get("solrize_end") is not None:
        reasons.append("Re-indexing was requested; the indexed data is replaced once it is done.")
    return reasons


def _validator_error_text(code: int) -> str:
    if code == 413:
        return "the file is larger than the validator accepts (HTTP 413)"
    if code == 422:
        return "the validator refused the file (HTTP 422)"
    if code >= 500:
        return f"the validator had an internal error (HTTP {code}); it is tried again later"
    return f"the validator answered HTTP {code}"


def _hours(seconds: int) -> str:
    hours = timedelta(seconds=seconds).total_seconds() / 3600
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def _last_error(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    failures = [s for s in stages if s["outcome"] != "ok"]
    if not failures:
        return None
    last = max(failures, key=lambda s: (s.get("last_attempt_at") or datetime.min, s["stage"]))
    return {
        "stage": last["stage"],
        "outcome": last["outcome"],
        "code": last.get("code"),
        "message": last.get("message"),
        "attempts": last.get("attempts"),
        "at": last.get("last_attempt_at"),
        "next_attempt_at": last.get("next_attempt_at"),
        "gave_up": last["outcome"] == "gave_up",
    }


# ---------------------------------------------------------------------------------------
# text for the CLI
# ---------------------------------------------------------------------------------------


def format_status(row: dict[str, Any]) -> str:
    """A dataset's status as plain text (``refresher status DATASET``).

    :param row: one dict from :func:`dataset_status`.
    """
    lines = [f"{row['name'] or row['id']}  (id {row['id']})"]
    publisher = row.get("publisher_name") or row.get("publisher") or "-"
    if row.get("publisher_title"):
        publisher += f" — {row['publisher_title']}"
    if row.get("publisher") and row.get("publisher") != row.get("publisher_name"):
        publisher += f" (org id {row['publisher']})"
    lines.append(f"{'publisher':12} {publisher}")
    state = row["state_label"] + (
        f" at {STAGE_WORDS.get(row['parked_stage'], row['parked_stage'])}" if row.get("parked_stage") else ""
    )
    lines.append(f"{'state':12} {state}; in the datastore: {row['availability']}")
    for i, reason in enumerate(row["reasons"] or ["nothing to report"]):
        lines.append(f"{'why' if i == 0 else '':12} {reason}")
    report = row.get("validation")
    if report:
        counts = ", ".join(f"{k} {v}" for k, v in report["summary"].items())
        kind = report["file_type"] or "unknown type"
        lines.append(
            f"{'report':12} {'valid' if report['valid'] else 'invalid'} {kind} {report['iati_version'] or ''}".rstrip()
            + (f"; {counts}" if counts else "")
        )
    acts = row["activities"]
    known = {k: v for k, v in acts.items() if v is not None}
    if known:
        lines.append(f"{'activities':12} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in known.items()))
    if row["errors"]:
        lines.append(f"{'errors':12} " + ", ".join(f"{k}={v}" for k, v in row["errors"].items()))
    last = row.get("last_error")
    if last:
        text = (
            f"{last['stage']} {last['outcome']} {last['code'] or ''}: {last['message'] or ''} "
            f"({_attempts(last['attempts'] or 0)}"
        )
        if last["next_attempt_at"]:
            text += f"; next try after {_when(last['next_attempt_at'])}"
        lines.append(f"{'last error':12} {text})")
    for key, value in row["timestamps"].items():
        if value is not None:
            lines.append(f"{TIMESTAMP_LABELS[key]:12} {_when(value)}")
    if row.get("url"):
        lines.append(f"{'source':12} {row['url']}")
    return "\n".join(lines)
