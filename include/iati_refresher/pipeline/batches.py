"""Per-document stages as batches: planning them, running one (claims, workers, outcomes), and
recording the documents of batches that failed or never ran."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from iati_refresher import connections, workers
from iati_refresher.db import repository as repo
from iati_refresher.db.connection import connector
from iati_refresher.outcomes import Outcome
from iati_refresher.pipeline.claims import ClaimKeeper, batch_owner
from iati_refresher.pipeline.common import database, exception_text, utcnow
from iati_refresher.pipeline.recording import apply_outcome, prepare_batch
from iati_refresher.run_health import FailedBatch
from iati_refresher.settings import Settings, get_settings
from iati_refresher.stage_specs import spec
from iati_refresher.storage import blob_config_for

log = logging.getLogger(__name__)


def _solr_missing(settings: Settings) -> str | None:
    from iati_refresher.solr_client import open_solr

    with open_solr(settings) as solr:
        return "no Solr connection ('solr') is configured: indexing skipped" if solr is None else None


#: Per optional connection (a stage's ``optional_connection``): why the stage cannot run without it.
_MISSING_CONNECTION: dict[str, Callable[[Settings], str | None]] = {connections.SOLR: _solr_missing}


def unavailable_reason(stage: str, settings: Settings) -> str | None:
    """Why ``stage`` cannot run in this deployment; None when it can."""
    optional = spec(stage).optional_connection
    return _MISSING_CONNECTION[optional](settings) if optional else None


def plan_batches(stage: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The batches of documents ready for ``stage`` now (each becomes one mapped task)."""
    settings = settings or get_settings()
    if unavailable_reason(stage, settings):
        return []
    limit = settings.batch_size * settings.max_batches_per_stage
    with database(settings) as conn:
        docs = repo.ready_documents(conn, stage, limit=limit, safety_period_s=settings.safety_check_period_s)
        conn.rollback()
    batches: list[dict[str, Any]] = []
    for chunk in chunk_documents(docs, settings.batch_size, settings.batch_max_bytes):
        if len(batches) == settings.max_batches_per_stage:
            break  # the rest waits for the next run: the map stays far below Airflow's max_map_length
        first = chunk[0]["name"] or chunk[0]["id"]
        label = first if len(chunk) == 1 else f"{first} +{len(chunk) - 1}"
        batches.append({"stage": stage, "ids": [d["id"] for d in chunk], "label": label, "key": f"{len(batches):04d}"})
    return batches


def chunk_documents(docs: Sequence[dict[str, Any]], max_documents: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """Cut ``docs`` (in order) into batches of at most ``max_documents`` documents and, where
    sizes are known (``source_bytes``), at most ``max_bytes`` bytes.

    Each mapped task instance costs Airflow a task start and the stage a worker pool, so
    many small files share one; a file larger than ``max_bytes`` gets a batch of its own.
    """
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for doc in docs:
        doc_bytes = int(doc.get("source_bytes") or 0)
        if current and (len(current) >= max_documents or size + doc_bytes > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(doc)
        size += doc_bytes
    if current:
        chunks.append(current)
    return chunks


def is_final_try(ti: Any) -> bool:
    """Whether this try of an Airflow task instance is its last (no retry would follow a failure)."""
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    return try_number is None or max_tries is None or int(try_number) > int(max_tries)


def run_batch(
    batch: dict[str, Any],
    *,
    run_id: str,
    dag_id: str,
    settings: Settings | None = None,
    final_try: bool = True,
    task_label: str | None = None,
) -> dict[str, Any]:
    """Claim the batch's documents, run the stage on each, record every outcome.

    Only documents still ready when claimed are processed (another run may have done them).
    A document's markers are written only after its output is stored.  When the batch
    itself fails (database lost, the task's deadline, a bug) on its ``final_try``, every
    document it had not settled gets a failed ``batch_failed`` outcome naming the task and
    the error before the exception goes on: no document is left looking untouched.
    """
    settings = settings or get_settings()
    stage = batch["stage"]
    owner = batch_owner(run_id, stage, batch.get("key", ""))
    started = utcnow()
    counts = {
        "documents_in": 0,
        "documents_ok": 0,
        "documents_skipped": 0,
        "documents_failed": 0,
        "activities": 0,
        "bytes": 0,
    }
    codes: dict[str, int] = {}
    settled: set[str] = set()
    with database(settings) as conn:
        claimed = repo.claim(conn, batch["ids"], stage, owner, settings.claim_ttl_s)
        docs = repo.ready_documents(
            conn, stage, ids=claimed, owner=owner, safety_period_s=settings.safety_check_period_s
        )
        ready_ids = {d["id"] for d in docs}
        repo.release(conn, [i for i in claimed if i not in ready_ids], owner)
        repo.mark_started(conn, stage, docs)
        conn.commit()
        counts["documents_in"] = len(docs)
        keeper = ClaimKeeper(connector(), [d["id"] for d in docs], owner, settings.claim_ttl_s).start()
        try:
            pending = prepare_batch(conn, stage, docs)
            settled.update(d["id"] for d in docs)
            settled.difference_update(d["id"] for d in pending)
            counts["documents_ok"] += len(docs) - len(pending)  # settled without a worker (reused report)
            for doc, raw in _execute(stage, pending, settings):
                outcome = Outcome.from_dict(raw)
                apply_outcome(conn, stage, doc, outcome, settings, run_id)
                conn.commit()
                settled.add(doc["id"])
                counts[f"documents_{outcome.status}" if outcome.status != "failed" else "documents_failed"] += 1
                counts["activities"] += int(outcome.data.get("activities") or 0)
                counts["bytes"] += int(outcome.data.get("bytes") or 0)
                if outcome.code and outcome.status != "ok":
                    codes[outcome.code] = codes.get(outcome.code, 0) + 1
        except BaseException as exc:  # the task's deadline (AirflowTaskTimeout) is a BaseException
            if final_try:
                unsettled = [d for d in docs if d["id"] not in settled]
                label = task_label or f"{stage}[{batch.get('label', '')}]"
                message = f"the {label} task failed after its retries: {exception_text(exc)}"
                failed = _record_batch_failure(settings, stage, unsettled, run_id, message)
                counts["documents_failed"] += failed
                codes["batch_failed"] = codes.get("batch_failed", 0) + failed
                log.error("%s: %d documents recorded as failed (batch_failed)", label, failed)
            raise
        finally:
            keeper.stop()
            with contextlib.suppress(psycopg.Error):  # the database may be what failed
                conn.rollback()
                repo.release(conn, [d["id"] for d in docs], owner)
                repo.record_telemetry(
                    conn,
                    {
                        "run_id": run_id,
                        "dag_id": dag_id,
                        "stage": stage,
                        "batch": batch.get("key", ""),
                        "started_at": started,
                        "finished_at": utcnow(),
                        **counts,
                    },
                )
                conn.commit()
    log.info("%s batch %s: %s %s", stage, batch.get("label"), counts, codes or "")
    return {**counts, "stage": stage, "key": batch.get("key", ""), "codes": codes}


def _record_batch_failure(
    settings: Settings, stage: str, docs: Sequence[dict[str, Any]], run_id: str, message: str
) -> int:
    """Failed, retryable ``batch_failed`` outcomes for ``docs``, on a connection of its own
    (the batch's may be the broken part).  Returns how many were recorded."""
    if not docs:
        return 0
    try:
        with database(settings) as conn:
            repo.record_outcomes(
                conn,
                stage,
                [
                    {
                        "document_id": d["id"],
                        "hash": d["hash"],
                        "status": "failed",
                        "code": "batch_failed",
                        "message": message,
                        "retryable": True,
                    }
                    for d in docs
                ],
                run_id=run_id,
                max_attempts=settings.max_attempts,
                base_delay_s=settings.retry_base_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            )
            conn.commit()
    except Exception:  # the summary records what this could not (its backstop)
        log.exception("could not record the failure of %d documents", len(docs))
        return 0
    return len(docs)


def record_lost_batches(
    failed: Sequence[FailedBatch],
    *,
    run_id: str,
    dag_id: str,
    settings: Settings | None = None,
    log_url: Callable[[FailedBatch], str] | None = None,
) -> dict[str, int]:
    """The summary's backstop: documents of batch tasks that failed without recording it
    (their process was killed, lost its heartbeat, or never started) get ``batch_failed``
    outcomes now.  Returns the number recorded per batch task."""
    settings = settings or get_settings()
    recorded: dict[str, int] = {}
    with database(settings) as conn:
        for batch in failed:
            owner = batch_owner(run_id, batch.stage, batch.key)
            docs = repo.unsettled_documents(
                conn,
                batch.stage,
                list(batch.ids),
                run_id=run_id,
                owner=owner,
                safety_period_s=settings.safety_check_period_s,
            )
            conn.rollback()
            where = f" (log: {log_url(batch)})" if log_url else ""
            if batch.state == "failed":
                message = f"the {batch.task} task failed after its retries without finishing{where}"
            else:
                message = f"the {batch.task} task did not run ({batch.state}){where}"
            n = _record_batch_failure(settings, batch.stage, docs, run_id, message)
            repo.release(conn, list(batch.ids), owner)
            if n:
                now = utcnow()
                repo.record_telemetry(
                    conn,
                    {
                        "run_id": run_id,
                        "dag_id": dag_id,
                        "stage": batch.stage,
                        "batch": batch.key,
                        "started_at": now,
                        "finished_at": now,
                        "documents_in": n,
                        "documents_failed": n,
                    },
                )
            conn.commit()
            recorded[batch.task] = n
    return recorded


def _execute(
    stage: str, docs: list[dict[str, Any]], settings: Settings
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    if not docs:
        return iter(())
    stage_spec = spec(stage)
    resolved = connections.resolve_all()
    with connections.preloaded(resolved):
        _require_backends(stage, settings)
    kind = stage_spec.pool_kind
    if stage_spec.remote_with and resolved.get(stage_spec.remote_with) is not None:
        kind = "thread"  # a remote service: the work is waiting on the network
    size = stage_spec.threads or settings.process_pool_size
    # Datetimes travel to spawned workers fine; jsonb values are plain dicts/lists.
    return workers.run_pool(stage_spec.worker_fn(), docs, settings, kind=kind, size=size, resolved=resolved)


def _open_validator(settings: Settings) -> None:
    from iati_refresher.clients import validator_for

    close = getattr(validator_for(settings), "close", None)
    if close is not None:
        close()


def _open_solr(settings: Settings) -> None:
    from iati_refresher.solr_client import open_solr

    with open_solr(settings):
        pass


#: Per connection a stage ``requires``: open its client (raises when the connection is missing).
_OPEN_CLIENT: dict[str, Callable[[Settings], None]] = {
    connections.VALIDATOR: _open_validator,
    connections.SOLR: _open_solr,
}


def _require_backends(stage: str, settings: Settings) -> None:
    """Fail the batch task, before any document is touched, when a connection its stage needs
    went missing since the preflight (deleted, or a secrets backend that now says "not
    found"): a systemic fault, not one document's."""
    blob_config_for(settings)
    for conn_id in spec(stage).requires:
        _OPEN_CLIENT[conn_id](settings)
