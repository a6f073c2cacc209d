"""Validate stage: schema check, publisher safety gate, full validation.

For one downloaded document (reference §2.5):

1. when ``file_schema_valid`` is unknown, ask the schema-only endpoint;
2. a schema-invalid document waits while it is fresher than the safety period (so the
   publisher safety check can count it) or while its publisher is black-flagged; it stays
   selectable and is looked at again later;
3. otherwise run full validation, asking for per-activity meta only for schema-invalid
   files (the clean stage needs it to keep the valid activities).

Before anything is sent, two rules apply whichever validator is configured (so the API and
the built-in validator reach the same state):

* a file whose prolog declares a DOCTYPE or entities is skipped ``doctype_refused``, once,
  with the reason: the real Validator answers 500 to entity expansion, 422 to external
  entities and accepts a harmless DOCTYPE that clean would refuse anyway;
* a file above ``settings.validator_max_bytes`` (the API's 60 MiB) is skipped ``too_large``.

How the Validator's answers are judged:

* 200, and 400/413/422 carrying a report (a body with ``valid``): the report is kept;
* 400/413/422 without a report (e.g. 413 ``{"error": "Max Filesize..."}``): the document is
  skipped with ``too_large`` / ``rejected`` and the status recorded; it is not posted again
  until its content changes (the reference re-posted such files on every loop);
* other 4xx: failed, not retryable (recorded, never retried forever as in the reference);
* 5xx, timeouts, connection errors: failed, retryable (the repository backs off and caps).

``Outcome.data`` for the recorder: ``schema_valid`` (a new schema result or None), ``report``
(the report to store, or None), ``api_error`` (the status for ``validation_api_error``),
``phase`` (``schema`` or ``full``), ``http_status``; waiting outcomes add ``deferred``
(and ``deferred_until`` for the safety period).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from iati_refresher.iati.xml import XmlRefused, check_prolog
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.validator_client import ValidatorResponse

REPORT_STATUSES = (400, 413, 422)


class Validator(Protocol):
    """What the stage needs from a validator (API client or built-in)."""

    def schema_validate(self, path: str) -> ValidatorResponse: ...

    def validate(self, path: str, meta: bool) -> ValidatorResponse: ...


def validate_document(
    doc: dict[str, Any], source_path: str, validator: Validator, settings: Settings, *, now: datetime
) -> Outcome:
    """Validate one document whose source file is at ``source_path``.

    :param doc: ``id``, ``hash``, ``downloaded`` (naive UTC), ``file_schema_valid`` (bool or None),
        ``black_flag`` (the publisher's flag time or None), ``regenerate_validation_report``.
    :param source_path: the downloaded file, as stored (any encoding).
    :param validator: a :class:`~iati_refresher.validator_client.ValidatorClient` or the built-in.
    :param settings: ``safety_check_period_s`` is used.
    :param now: the current time (naive UTC), passed in so the stage stays deterministic.
    :return: ``ok`` with a report, ``ok`` waiting (``waiting_safety_period`` / ``publisher_flagged``),
        ``skipped`` (``too_large``, ``rejected``) or ``failed``.
    """
    document_id = doc["id"]
    refused = _not_sent(document_id, source_path, settings)
    if refused is not None:
        return refused
    schema_valid = doc.get("file_schema_valid")
    new_schema_result: bool | None = None

    if schema_valid is None:
        answer = validator.schema_validate(source_path)
        verdict = (answer.body or {}).get("valid")
        if answer.status == 200 and isinstance(verdict, bool):
            schema_valid = new_schema_result = verdict
        else:
            return _judge_failure(document_id, answer, phase="schema")

    if schema_valid is False:
        waiting = _waiting(doc, new_schema_result, settings, now)
        if waiting is not None:
            return waiting

    meta = schema_valid is False
    answer = validator.validate(source_path, meta=meta)
    data = {"schema_valid": new_schema_result, "phase": "full", "http_status": answer.status}
    if answer.status is not None and (answer.status == 200 or answer.status in REPORT_STATUSES):
        report = answer.body
        if report is not None and "valid" in report:
            api_error = None if answer.status == 200 else answer.status
            return Outcome(
                document_id,
                "ok",
                message=_describe(report, answer.status, meta),
                data={**data, "report": report, "api_error": api_error},
            )
        if answer.status in REPORT_STATUSES:
            code = "too_large" if answer.status == 413 else "rejected"
            return Outcome.skipped(
                document_id,
                code,
                f"the Validator answered {answer.status} without a report: {_error_text(answer)}; "
                "not posted again until the document changes",
                **data,
                report=None,
                api_error=answer.status,
            )
    return _judge_failure(document_id, answer, phase="full", schema_valid=new_schema_result)


class NotSent(NamedTuple):
    """Why a file is not sent to any validator: the outcome code, the reason, the status to record."""

    code: str
    message: str
    api_error: int | None


def not_sent_reason(path: str | os.PathLike[str], settings: Settings) -> NotSent | None:
    """Why no validator (API or built-in) is asked about the file at ``path``, or None."""
    size = os.path.getsize(path)
    if size > settings.validator_max_bytes:
        mib = 1024 * 1024
        return NotSent(
            "too_large",
            f"the file is {size / mib:.1f} MiB, above the validation limit of "
            f"{settings.validator_max_bytes / mib:g} MiB (REFRESHER_VALIDATOR_MAX_BYTES); "
            "not validated until the document changes",
            413,
        )
    try:
        check_prolog(path)
    except XmlRefused as exc:
        return NotSent(exc.code, f"not sent to the Validator: {exc}", None)
    return None


def _not_sent(document_id: str, source_path: str, settings: Settings) -> Outcome | None:
    reason = not_sent_reason(source_path, settings)
    if reason is None:
        return None
    return Outcome.skipped(
        document_id,
        reason.code,
        reason.message,
        schema_valid=None,
        report=None,
        phase="schema",
        http_status=None,
        api_error=reason.api_error,
    )


def _waiting(doc: dict[str, Any], new_schema_result: bool | None, settings: Settings, now: datetime) -> Outcome | None:
    """A schema-invalid document that must not be fully validated yet, or None."""
    data: dict[str, Any] = {
        "schema_valid": new_schema_result,
        "report": None,
        "api_error": None,
        "phase": "schema",
        "http_status": None,
    }
    if doc.get("black_flag") is not None:
        return Outcome(
            doc["id"],
            "ok",
            code="publisher_flagged",
            message="schema-invalid and the publisher is black-flagged: full validation waits until it is unflagged",
            data={**data, "deferred": "publisher_flagged"},
        )
    downloaded = doc.get("downloaded")
    if downloaded is None:
        return None
    until = _naive_utc(downloaded) + timedelta(seconds=settings.safety_check_period_s)
    if _naive_utc(now) < until:
        return Outcome(
            doc["id"],
            "ok",
            code="waiting_safety_period",
            message=f"schema-invalid: full validation waits until {until:%Y-%m-%d %H:%M} UTC "
            "so the publisher safety check can count it",
            data={**data, "deferred": "waiting_safety_period", "deferred_until": until.isoformat()},
        )
    return None


def _judge_failure(
    document_id: str, answer: ValidatorResponse, *, phase: str, schema_valid: bool | None = None
) -> Outcome:
    data = {
        "schema_valid": schema_valid,
        "report": None,
        "api_error": answer.status,
        "phase": phase,
        "http_status": answer.status,
    }
    where = "schema check" if phase == "schema" else "validation"
    status = answer.status
    if status is None:
        return Outcome.failed(
            document_id, "validator_unavailable", f"{where}: {answer.error or 'no answer'}", retryable=True, **data
        )
    if status >= 500:
        return Outcome.failed(
            document_id,
            f"http_{status}",
            f"{where}: the Validator failed ({status}): {_error_text(answer)}",
            retryable=True,
            **data,
        )
    if status == 200:  # an answer without the expected body: a Validator hiccup, try later
        return Outcome.failed(
            document_id,
            "unexpected_answer",
            f"{where}: 200 without a valid flag: {_error_text(answer)}",
            retryable=True,
            **data,
        )
    if phase == "schema" and status in REPORT_STATUSES:
        code = "too_large" if status == 413 else "rejected"
        return Outcome.skipped(
            document_id, code, f"{where}: the Validator refused the file ({status}): {_error_text(answer)}", **data
        )
    # Other 4xx (401 wrong key, 404 wrong URL...) and anything unexpected: retrying the
    # same request cannot help; recorded so an operator can fix the configuration.
    return Outcome.failed(
        document_id,
        f"http_{status}",
        f"{where}: unexpected answer {status}: {_error_text(answer)}",
        retryable=False,
        **data,
    )


def _describe(report: dict[str, Any], status: int, meta: bool) -> str:
    summary = report.get("summary") or {}
    counts = ", ".join(f"{summary.get(k, 0)} {k}" for k in ("critical", "error", "warning"))
    verdict = "valid" if report.get("valid") else "invalid"
    activities = report.get(report.get("fileType") or "") if meta else None
    extra = f"; meta for {len(activities)} activities" if isinstance(activities, list) else ""
    return f"{verdict} ({status}): {counts}{extra}"


def _error_text(answer: ValidatorResponse) -> str:
    """What the Validator said: its ``feedback`` and its ``error`` (a 500 carries both,
    ``error`` often an empty object), else the transport's error."""
    body = answer.body if isinstance(answer.body, dict) else {}
    parts = []
    for key in ("feedback", "error", "message"):
        value = body.get(key)
        if value in (None, "", {}, []):
            continue
        parts.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    if parts:
        return " — ".join(parts)[:500]
    if body:
        return json.dumps(body, ensure_ascii=False)[:500]
    return (answer.error or "no details")[:500]


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
