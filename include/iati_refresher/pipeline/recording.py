"""The outcome-recording rules of the per-document stages.

Before a batch's workers run, a stage may *prepare* its documents from the database (one
query per batch) and settle those that need no worker.  After each document, its outcome
is *recorded*: the stage's own reference columns first (one ``record_<stage>`` function
each, named by the stage's :class:`~iati_refresher.stage_specs.StageSpec`), then the rules
every stage shares (:func:`apply_outcome`): an excluded version leaves Solr, the stage
record with its retry rule, an answered request flag cleared.
"""

from __future__ import annotations

import logging
from typing import Any

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.stage_specs import EXCLUDES_FROM_DATASTORE, spec

log = logging.getLogger(__name__)

#: Clean stops these files without a clean_error, as the reference does.
CLEAN_STOPS_WITHOUT_ERROR = ("organisation_file", "version_1x", "not_iati")


# --- before the workers -------------------------------------------------------------------------


def prepare_batch(conn: Db, stage: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what the workers need from the database, and settle what needs no worker."""
    docs = [{k: v for k, v in doc.items() if k != "black_flag" or v is not None} for doc in docs]
    prepare = spec(stage).prepare_fn()
    if prepare is None:
        conn.rollback()
        return docs
    return prepare(conn, docs)


def prepare_validate(conn: Db, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identical content validated before: reuse that report, don't recompute it (one query)."""
    previous_reports = repo.latest_reports_for_hashes(
        conn, [d["hash"] for d in docs if not d["regenerate_validation_report"]]
    )
    conn.rollback()
    prepared = []
    for doc in docs:
        previous = None if doc["regenerate_validation_report"] else previous_reports.get(doc["hash"])
        if previous is not None and (doc["file_schema_valid"] is not None or previous["valid"]):
            schema_valid = True if previous["valid"] else doc["file_schema_valid"]
            repo.reuse_validation(conn, doc, previous["id"], schema_valid)
            repo.record_outcomes(
                conn,
                "validate",
                [
                    {
                        "document_id": doc["id"],
                        "hash": doc["hash"],
                        "status": "ok",
                        "code": "report_reused",
                        "message": f"report {previous['id']} for identical content",
                    }
                ],
                run_id=None,
                max_attempts=1,
                base_delay_s=0,
                max_delay_s=0,
            )
            conn.commit()
            continue
        prepared.append(doc)
    return prepared


def prepare_clean(conn: Db, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each document gets its validation report (one query for the batch)."""
    reports = repo.validation_reports(conn, [d["validation"] for d in docs])
    conn.rollback()
    for doc in docs:
        row = reports.get(doc["validation"])
        doc["report"] = row["report"] if row else None
    return docs


# --- one outcome: the stage's own columns ----------------------------------------------------------


def record_download(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    data = outcome.data
    repo.finish_download(
        conn,
        [
            {
                "id": doc["id"],
                "hash": doc["hash"],
                "ok": outcome.status == "ok",
                "download_error": data.get("download_error"),
                "etag": data.get("etag"),
                "last_modified": data.get("last_modified"),
                "bytes": data.get("bytes"),
                "encoding": data.get("encoding"),
            }
        ],
    )


def record_validate(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    data = outcome.data
    if outcome.code == "source_missing":
        repo.mark_not_downloaded(conn, doc["id"], doc["hash"])
    elif data.get("report") is not None:
        repo.save_validation(
            conn, doc, data["report"], api_error=data.get("api_error"), schema_valid=data.get("schema_valid")
        )
    else:
        repo.set_schema_result(
            conn, doc["id"], doc["hash"], valid=data.get("schema_valid"), api_error=data.get("api_error")
        )


def record_clean(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    if outcome.code == "source_missing":
        repo.mark_not_downloaded(conn, doc["id"], doc["hash"])
        return
    ok = outcome.status == "ok"
    error = None if ok or outcome.code in CLEAN_STOPS_WITHOUT_ERROR else outcome.message
    repo.finish_clean(conn, doc, ok=ok, error=error)


def record_flatten(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    ok = outcome.status == "ok"
    activities = int(outcome.data.get("activities") or 0)
    manifest = outcome.data.get("manifest") if activities else []
    repo.finish_flatten(conn, doc, ok=ok, manifest=manifest, activities=activities if ok else None)


def record_lakify(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    ok = outcome.status == "ok"
    repo.finish_lakify(conn, doc, ok=ok, error=None if ok else (outcome.message or outcome.code))


def record_index(conn: Db, doc: dict[str, Any], outcome: Outcome) -> None:
    ok = outcome.status == "ok"
    if outcome.code == "lake_missing":
        repo.reset_lakify(conn, doc["id"], doc["hash"])
    repo.finish_index(
        conn,
        doc,
        ok=ok,
        error=None if ok else f"{outcome.code}: {outcome.message}",
        activities=outcome.data.get("activities"),
    )


# --- one outcome: the rules every stage shares ----------------------------------------------------


def apply_outcome(conn: Db, stage: str, doc: dict[str, Any], outcome: Outcome, settings: Settings, run_id: str) -> None:
    """Write one outcome: the reference's columns first, then our stage record."""
    spec(stage).record_fn()(conn, doc, outcome)
    if outcome.status == "skipped" and (stage, outcome.code) in EXCLUDES_FROM_DATASTORE:
        withdraw_old_version(conn, doc, settings)
    # A vanished source file was queued for download again just above: the stage must run
    # again once the file is back, not stay parked.
    retryable = outcome.retryable or outcome.code == "source_missing"
    repo.record_outcomes(
        conn,
        stage,
        [
            {
                "document_id": doc["id"],
                "hash": doc["hash"],
                "status": outcome.status,
                "code": outcome.code,
                "message": outcome.message,
                "retryable": retryable,
            }
        ],
        run_id=run_id,
        max_attempts=settings.max_attempts,
        base_delay_s=settings.retry_base_delay_s,
        max_delay_s=settings.retry_max_delay_s,
    )
    # A reindex / regenerate request that ended for good is answered: it must not revive
    # the document on every run.
    repo.settle_request(conn, stage, doc["id"], doc["hash"])


def withdraw_old_version(conn: Db, doc: dict[str, Any], settings: Settings) -> None:
    """Remove a dataset's older version from Solr once its current version is excluded.

    The database forgets the indexed version first; if Solr cannot be reached now, the
    reconciliation DAG removes the documents (they no longer match an indexed version).
    """
    if not doc.get("solr_indexed_hash"):
        return
    repo.mark_unindexed(conn, doc["id"])
    conn.commit()
    from iati_refresher.solr_client import SolrError, open_solr
    from iati_refresher.stages.index import unindex_document

    with open_solr(settings) as solr:
        if solr is None:
            return
        try:
            unindex_document(doc["id"], solr, settings)
        except SolrError as exc:
            log.warning("%s: old version not yet removed from Solr (%s); reconciliation will", doc["id"], exc)
