"""What the DAG tasks call: each function is one task body's worth of work.

This is the only module that combines the database, the clients and the stage
functions.  Every function opens its own database connection (tasks run in separate
processes), checks the schema version first, and returns plain JSON-able values (they
travel through XCom).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg

from iati_refresher import connections, workers
from iati_refresher.db import migrate
from iati_refresher.db import repository as repo
from iati_refresher.db.connection import connector, open_refresher_db
from iati_refresher.db.types import Db
from iati_refresher.outcomes import Outcome
from iati_refresher.run_health import FailedBatch, RunHealth, assess
from iati_refresher.settings import Settings, get_settings
from iati_refresher.storage import BlobStore, BlobStoreConfig, blob_config_for, blob_store

log = logging.getLogger(__name__)
# The Azure SDK logs every request and response header at INFO, httpx one line per request
# (downloads, Solr, the validator): far too loud for task logs.
for _noisy in ("azure", "httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

STAGES = repo.STAGES
# How each stage's per-document work is pooled: CPU-bound stages in processes.
POOL_KIND = {
    "download": "thread",
    "validate": "process",
    "clean": "process",
    "flatten": "process",
    "lakify": "process",
    "index": "process",
}
DOWNLOAD_THREADS = 8


class RunUnhealthy(RuntimeError):
    """The run's failures crossed the threshold: the summary task fails the run."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def database(settings: Settings | None = None, *, check_schema: bool = True):
    settings = settings or get_settings()
    conn = open_refresher_db()
    try:
        if check_schema:
            migrate.require(conn, migrate.latest_number(settings.migrations_dir))
        yield conn
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# preflight
# ---------------------------------------------------------------------------------------

#: Executors whose tasks all run on the machine of the scheduler (or in the test process).
LOCAL_EXECUTORS = {"LocalExecutor", "SequentialExecutor", "DebugExecutor", ""}


class PreflightFailed(RuntimeError):
    """The deployment cannot run the pipeline as configured; the message says what to change."""


def airflow_executor() -> str:
    """The configured executor(s) of this Airflow deployment (``[core] executor``)."""
    try:
        from airflow.configuration import conf

        return str(conf.get("core", "executor", fallback="") or "")
    except Exception:  # outside Airflow (CLI)
        return ""


def preflight(settings: Settings | None = None, *, executor: str | None = None) -> dict[str, Any]:
    """Check the deployment before the run does anything; log the backend of every stage.

    Refuses a local blob directory under a distributed executor (Celery, Kubernetes):
    each worker would write files the others cannot read, and documents would fail one
    stage later on another machine — unless ``REFRESHER_LOCAL_BLOB_DIR_SHARED`` says the
    directory is a mount all workers share.
    """
    from iati_refresher.clients import validator_for
    from iati_refresher.solr_client import open_solr

    settings = settings or get_settings()
    executor = airflow_executor() if executor is None else executor
    names = [e.split(":")[-1].rsplit(".", 1)[-1].strip() for e in executor.split(",")]
    distributed = [n for n in names if n not in LOCAL_EXECUTORS]
    missing: list[str] = []

    def backend(describe: Callable[[], str]) -> str:
        try:
            return describe()
        except connections.ConnectionMissing as exc:
            missing.append(str(exc))
            return f"MISSING ({exc.conn_id})"

    def index() -> str:
        with open_solr(settings) as solr:
            return f"Solr at {solr.base_url}" if solr is not None else "not configured (embedded run): indexing skipped"

    def validator() -> str:
        client = validator_for(settings)
        close = getattr(client, "close", None)
        if close is not None:
            close()
        base_url = getattr(client, "base_url", None)
        return f"IATI Validator API at {base_url}" if base_url else "built-in schema validator"

    blob: list[BlobStoreConfig] = []

    def storage() -> str:
        blob.append(blob_config_for(settings))
        return blob[0].describe()

    backends = {
        "kind": "embedded run (local defaults allowed)" if settings.embedded else "deployment",
        "executor": executor or "(default)",
        "storage": backend(storage),
        "registry": f"{settings.registry_source} at {_registry_url(settings)}",
        "validator": backend(validator),
        "index": backend(index),
        "alerts": "Slack (slack_oncall)"
        if connections.get_connection(connections.SLACK)
        else "NOT CONFIGURED: failures are only logged (set the slack_oncall connection)",
        "notices": "Communications Hub (iati_commshub)"
        if connections.get_connection(connections.COMMSHUB)
        else "no Communications Hub: publisher flags are announced in Slack only",
    }
    for what, where in backends.items():
        log.info("preflight: %-9s %s", what, where)
    if missing:
        raise PreflightFailed("this deployment lacks what the pipeline needs: " + "; ".join(missing))
    if distributed and blob[0].backend == "local" and not settings.local_blob_dir_shared:
        raise PreflightFailed(
            f"the {', '.join(distributed)} runs tasks on several machines, but blob storage is the local directory "
            f"{blob[0].local_dir} of each one: configure the '{connections.BLOB_STORAGE}' connection (Azure Blob "
            "Storage), or set REFRESHER_LOCAL_BLOB_DIR_SHARED=true if that directory is a mount every worker shares"
        )
    return backends


def _registry_url(settings: Settings) -> str:
    conn = connections.get_connection(connections.REGISTRY)
    if conn is not None:
        return conn.base_url(default_scheme="https")
    return settings.bds_url if settings.registry_source == "bds" else settings.ckan_url


# ---------------------------------------------------------------------------------------
# migrate
# ---------------------------------------------------------------------------------------


def migrate_database(target: int | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Bring the database to this code's migration and make sure the blob containers exist."""
    settings = settings or get_settings()
    with database(settings, check_schema=False) as conn:
        before, after = migrate.migrate(conn, settings.migrations_dir, target)
    log.info("refresher database: migration %s → %s", before, after)
    with blob_store(settings) as store:
        store.ensure_containers(containers(settings))
    return {"from": before, "to": after, "storage": blob_config_for(settings).describe()}


def containers(settings: Settings) -> list[str]:
    return [
        settings.source_container,
        settings.clean_container,
        settings.lake_container,
        settings.flat_container,
        settings.adhoc_container,
    ]


# ---------------------------------------------------------------------------------------
# registry sync
# ---------------------------------------------------------------------------------------


def sync_registry(run_id: str | None, settings: Settings | None = None, *, force: bool = False) -> dict[str, Any]:
    """Fetch the registry and apply it.  Returns the sync counts (``refused`` when a gate
    stopped it; ``skipped_unchanged`` when the index ETag did not change)."""
    from iati_refresher.clients import registry_for
    from iati_refresher.registry.base import RegistryInconsistent, RegistryUnavailable
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.sync import SyncResult, sync_snapshot

    settings = settings or get_settings()
    source = registry_for(settings)
    source_name = settings.registry_source
    with database(settings) as conn:
        state = repo.registry_state(conn, source_name)
        conn.rollback()
        previous_etag = None if force or state is None else state["etag"]
        try:
            snapshot = source.fetch(previous_etag)
        except (RegistryInconsistent, RegistryUnavailable) as exc:
            repo.save_registry_state(
                conn, source_name, etag=None, index_created=None, synced=False, result=f"skipped: {exc}"
            )
            conn.commit()
            log.warning("registry sync skipped: %s", exc)
            return {**SyncResult(source=source_name).counts(), "skipped_reason": str(exc)}
        if snapshot is None:
            repo.save_registry_state(
                conn, source_name, etag=previous_etag, index_created=None, synced=False, result="unchanged index (ETag)"
            )
            conn.commit()
            return {**SyncResult(source=source_name, skipped_unchanged=True).counts()}
        with blob_store(settings) as blobs, open_solr(settings) as solr:
            result = sync_snapshot(
                conn,
                snapshot,
                seen_at=utcnow(),
                run_id=run_id,
                publisher_safety_share=settings.publisher_safety_share,
                document_safety_share=settings.document_safety_share,
                remove_version=lambda doc_id, old_hash: remove_version_blobs(conn, blobs, settings, doc_id, old_hash),
                remove_dataset=lambda doc_id, hash_: remove_dataset_everywhere(
                    conn, blobs, solr, settings, doc_id, hash_
                ),
            )
        repo.save_registry_state(
            conn,
            source_name,
            etag=snapshot.etag,
            index_created=snapshot.index_created,
            synced=result.refused is None,
            result=result.refused or "synced",
        )
        conn.commit()
    counts = result.counts()
    if result.rejected:
        counts["rejected_records"] = result.rejected[:50]
    if result.cleanup_errors:
        counts["cleanup_error_messages"] = result.cleanup_errors[:20]
    log.info("registry sync: %s", {k: v for k, v in counts.items() if not isinstance(v, list)})
    return counts


def registry_change_counts(sync: dict[str, Any]) -> dict[str, int]:
    return {k: int(sync.get(k) or 0) for k in ("added", "updated", "removed")}


def _shared_hash(conn: Db, hash_: str, doc_id: str) -> bool:
    shared = repo.documents_sharing_hash(conn, hash_, doc_id) > 0
    conn.rollback()
    return shared


def remove_version_blobs(conn: Db, blobs: BlobStore, settings: Settings, doc_id: str, hash_: str) -> None:
    """Delete one old version's files: source and clean (unless another dataset has the
    same content, so the same blob name) and its flattened output."""
    if hash_ and not _shared_hash(conn, hash_, doc_id):
        blobs.delete(settings.source_container, [f"{hash_}.xml"])
        blobs.delete(settings.clean_container, [f"{hash_}.xml"])
    from iati_refresher.stages.lakify import lake_bundle_name

    blobs.delete(settings.flat_container, [f"{doc_id}/{hash_}.jsonl", lake_bundle_name(doc_id, hash_)])


def remove_dataset_everywhere(
    conn: Db, blobs: BlobStore, solr: Any, settings: Settings, doc_id: str, hash_: str
) -> None:
    """A dataset left the registry: remove it from Solr, the lake and the blob containers."""
    if solr is not None:
        from iati_refresher.stages.index import unindex_document

        unindex_document(doc_id, solr, settings)
    remove_version_blobs(conn, blobs, settings, doc_id, hash_)
    blobs.delete_prefix(settings.lake_container, f"{doc_id}/")
    blobs.delete_prefix(settings.flat_container, f"{doc_id}/")


# ---------------------------------------------------------------------------------------
# per-document stages
# ---------------------------------------------------------------------------------------


def stage_available(stage: str, settings: Settings) -> str | None:
    """Why ``stage`` cannot run in this deployment (None when it can)."""
    if stage == "index":
        from iati_refresher.solr_client import open_solr

        with open_solr(settings) as solr:
            if solr is None:
                return "no Solr connection ('solr') is configured: indexing skipped"
    return None


def plan_batches(stage: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The batches of documents ready for ``stage`` now (each becomes one mapped task)."""
    settings = settings or get_settings()
    if stage_available(stage, settings):
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


class ClaimKeeper:
    """Renews a batch's claims every third of the lease while the batch works on them.

    A batch may take longer than ``claim_ttl_s`` (a slow Validator, big files): without
    renewal its documents would be handed to another run while still being processed.
    The renewals stop with the batch, and with its process if that is killed, so a dead
    worker's claims still expire after one lease.  The keeper opens its own connection,
    and only once a renewal is due (most batches end before that).
    """

    def __init__(self, open_connection: Callable[[], Db], ids: Sequence[str], owner: str, ttl_s: int):
        self.open_connection, self.ids, self.owner, self.ttl_s = open_connection, list(ids), owner, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claims-{owner}", daemon=True)

    def start(self) -> ClaimKeeper:
        if self.ids:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        conn: Db | None = None
        try:
            while not self._stop.wait(max(0.1, self.ttl_s / 3)):
                try:
                    conn = conn or self.open_connection()
                    held = repo.renew_claims(conn, self.ids, self.owner, self.ttl_s)
                    conn.commit()
                except psycopg.Error as exc:  # the batch's own connection will report it too
                    log.warning("could not renew the claims of %s: %s", self.owner, exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if held < len(self.ids):
                    log.warning(
                        "%s holds %d of its %d claims: the others expired and were taken",
                        self.owner,
                        held,
                        len(self.ids),
                    )
        finally:
            if conn is not None:
                conn.close()


def batch_owner(run_id: str, stage: str, key: str) -> str:
    """The claim owner of one batch: the same for every try of its task, so a retry (or the
    summary, after the task was lost) can take over claims a dead try left behind."""
    return f"{run_id}:{stage}:{key}"


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
            pending = _prepare(conn, stage, docs)
            settled.update(d["id"] for d in docs)
            settled.difference_update(d["id"] for d in pending)
            counts["documents_ok"] += len(docs) - len(pending)  # settled without a worker (reused report)
            for doc, raw in _execute(stage, pending, settings):
                outcome = Outcome.from_dict(raw)
                _apply(conn, stage, doc, outcome, settings, run_id)
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
                message = f"the {label} task failed after its retries: {_exception_text(exc)}"
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


def _exception_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[:1000]


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


def _prepare(conn: Db, stage: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what the workers need from the database, and settle what needs no worker."""
    prepared = []
    # One query per batch, not per document.
    previous_reports = (
        repo.latest_reports_for_hashes(conn, [d["hash"] for d in docs if not d["regenerate_validation_report"]])
        if stage == "validate"
        else {}
    )
    reports = repo.validation_reports(conn, [d["validation"] for d in docs]) if stage == "clean" else {}
    conn.rollback()
    for doc in docs:
        doc = {k: v for k, v in doc.items() if k != "black_flag" or v is not None}
        if stage == "validate" and not doc["regenerate_validation_report"]:
            previous = previous_reports.get(doc["hash"])
            # Identical content was validated before: reuse that report, don't recompute it.
            if previous is not None and (doc["file_schema_valid"] is not None or previous["valid"]):
                schema_valid = True if previous["valid"] else doc["file_schema_valid"]
                repo.reuse_validation(conn, doc, previous["id"], schema_valid)
                repo.record_outcomes(
                    conn,
                    stage,
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
        if stage == "clean":
            row = reports.get(doc["validation"])
            doc["report"] = row["report"] if row else None
        prepared.append(doc)
    return prepared


def _execute(stage: str, docs: list[dict[str, Any]], settings: Settings):
    if not docs:
        return iter(())
    resolved = connections.resolve_all()
    with connections.preloaded(resolved):
        _require_backends(stage, settings)
    kind = POOL_KIND[stage]
    if stage == "validate" and resolved.get(connections.VALIDATOR) is not None:
        kind = "thread"  # a remote validator: the work is waiting on the network
    size = DOWNLOAD_THREADS if stage == "download" else settings.process_pool_size
    # Datetimes travel to spawned workers fine; jsonb values are plain dicts/lists.
    return workers.run_pool(workers.STAGE_WORKERS[stage], docs, settings, kind=kind, size=size, resolved=resolved)


def _require_backends(stage: str, settings: Settings) -> None:
    """Fail the batch task, before any document is touched, when a connection its stage needs
    went missing since the preflight (deleted, or a secrets backend that now says "not
    found"): a systemic fault, not one document's."""
    blob_config_for(settings)
    if stage == "validate":
        from iati_refresher.clients import validator_for

        close = getattr(validator_for(settings), "close", None)
        if close is not None:
            close()
    elif stage == "index":
        from iati_refresher.solr_client import open_solr

        with open_solr(settings):
            pass


# A new version excluded by one of these rules will never be indexed: the old version's
# Solr documents must not stay searchable as if they were the dataset's current content.
EXCLUDES_FROM_DATASTORE = {
    ("validate", "too_large"),
    ("validate", "doctype_refused"),
    ("clean", "meta_conflict"),
    ("clean", "no_valid_activities"),
    ("clean", "not_iati"),
    ("clean", "version_1x"),
    ("clean", "organisation_file"),
    ("clean", "doctype_refused"),
}


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


def remove_from_index(ids: Sequence[str], settings: Settings | None = None) -> int:
    """Take datasets out of Solr: their documents deleted everywhere, their indexed version
    forgotten (the index stage puts them back when asked).  Returns how many documents went."""
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.index import unindex_document

    settings = settings or get_settings()
    removed = 0
    with open_solr(settings) as solr, database(settings) as conn:
        if solr is None:
            raise connections.ConnectionMissing(connections.SOLR, "the Solr to remove the datasets from")
        for doc_id in ids:
            removed += unindex_document(doc_id, solr, settings)
            repo.mark_unindexed(conn, doc_id)
            conn.commit()
    return removed


def _apply(conn: Db, stage: str, doc: dict[str, Any], outcome: Outcome, settings: Settings, run_id: str) -> None:
    """Write one outcome: the reference's columns first, then our stage record."""
    data = outcome.data
    ok = outcome.status == "ok"
    if stage == "download":
        repo.finish_download(
            conn,
            [
                {
                    "id": doc["id"],
                    "hash": doc["hash"],
                    "ok": ok,
                    "download_error": data.get("download_error"),
                    "etag": data.get("etag"),
                    "last_modified": data.get("last_modified"),
                    "bytes": data.get("bytes"),
                    "encoding": data.get("encoding"),
                }
            ],
        )
    elif stage == "validate":
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
    elif stage == "clean":
        if outcome.code == "source_missing":
            repo.mark_not_downloaded(conn, doc["id"], doc["hash"])
        else:
            # Organisation and 1.x files stop here without a clean_error, as in the reference.
            error = None if ok or outcome.code in ("organisation_file", "version_1x", "not_iati") else outcome.message
            repo.finish_clean(conn, doc, ok=ok, error=error)
    elif stage == "flatten":
        activities = int(data.get("activities") or 0)
        manifest = data.get("manifest") if activities else []
        repo.finish_flatten(conn, doc, ok=ok, manifest=manifest, activities=activities if ok else None)
    elif stage == "lakify":
        repo.finish_lakify(conn, doc, ok=ok, error=None if ok else (outcome.message or outcome.code))
    elif stage == "index":
        if outcome.code == "lake_missing":
            repo.reset_lakify(conn, doc["id"], doc["hash"])
        repo.finish_index(
            conn,
            doc,
            ok=ok,
            error=None if ok else f"{outcome.code}: {outcome.message}",
            activities=data.get("activities"),
        )
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


# ---------------------------------------------------------------------------------------
# publisher safety check
# ---------------------------------------------------------------------------------------


def safety_check(
    settings: Settings | None = None, *, send_slack: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Read unflag requests, flag flooding publishers, notify each new flag once."""
    from iati_refresher import notify
    from iati_refresher.stages.safety import apply_unflag_requests, notify_flagged

    settings = settings or get_settings()
    with database(settings) as conn:
        queue = notify.unflag_queue_for(settings)
        unflagged: list[str] = []
        if queue is not None:

            def unflag(org_id: str) -> list[str]:
                org_ids = repo.unflag_publisher(conn, org_id)
                conn.commit()
                return org_ids

            unflagged = apply_unflag_requests(queue, unflag)
        flagged = repo.flag_publishers(conn, settings.safety_check_threshold, settings.safety_check_period_s)
        conn.commit()
        pending = repo.publishers_to_notify(conn)
        conn.rollback()
        notified = (
            notify_flagged(pending, send_slack, notify.commshub_for(settings), settings=settings) if pending else []
        )
        for org_id in notified:
            repo.mark_notified(conn, org_id)
        conn.commit()
    return {"unflagged": unflagged, "flagged": flagged, "notified": notified}


def unflag_publisher(publisher: str, settings: Settings | None = None) -> list[str]:
    with database(settings) as conn:
        org_ids = repo.unflag_publisher(conn, publisher)
        conn.commit()
    return org_ids


# ---------------------------------------------------------------------------------------
# run summary
# ---------------------------------------------------------------------------------------


def summarise_run(
    run_id: str,
    sync: dict[str, Any] | None,
    settings: Settings | None = None,
    *,
    dag_id: str = "iati_refresh",
    plans: dict[str, list[dict[str, Any]] | None] | None = None,
    task_states: dict[str, Any] | None = None,
    page: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Per-stage counts of this run, backlogs and parked documents, and the verdict.

    With ``plans`` (each plan task's batches) and ``task_states`` (Airflow's state of every
    task instance of the run), batch tasks that failed after their retries or never ran
    are found, their untouched documents recorded as failed (:func:`record_lost_batches`),
    and counted.  ``page`` is called once with everything that went wrong beyond
    per-document data.  Raises :class:`RunUnhealthy` (failing the run) when a stage could
    not run or every batch of a stage failed, another task failed, the sync was refused, or
    the failed documents cross the threshold.  When the summary itself cannot run (the
    database is away), it pages that before failing: the DAG callback leaves it to us.
    """
    try:
        return _summarise_run(run_id, sync, settings, dag_id=dag_id, plans=plans, task_states=task_states, page=page)
    except RunUnhealthy:
        raise
    except Exception as exc:
        if page is not None:
            from iati_refresher.alerts import task_log_url

            page(
                f":red_circle: *{dag_id}* run `{run_id}` failed: the summary could not assess it "
                f"({_exception_text(exc)}) <{task_log_url(dag_id, run_id, 'summary')}|View log>"
            )
        raise


def _summarise_run(
    run_id: str,
    sync: dict[str, Any] | None,
    settings: Settings | None,
    *,
    dag_id: str,
    plans: dict[str, list[dict[str, Any]] | None] | None,
    task_states: dict[str, Any] | None,
    page: Callable[[str], Any] | None,
) -> dict[str, Any]:
    from iati_refresher.alerts import task_log_url

    settings = settings or get_settings()
    health = assess(STAGES, plans or {}, task_states) if task_states is not None else RunHealth()

    def log_url(batch: FailedBatch) -> str:
        return task_log_url(dag_id, run_id, batch.stage, batch.map_index)

    lost = (
        record_lost_batches(health.failed_batches, run_id=run_id, dag_id=dag_id, settings=settings, log_url=log_url)
        if health.failed_batches
        else {}
    )
    with database(settings) as conn:
        stages = {r["stage"]: r for r in repo.run_summary(conn, run_id)}
        backlog = repo.stage_backlogs(conn, safety_period_s=settings.safety_check_period_s)
        parked = repo.parked_counts(conn)
        conn.rollback()
    rows: list[dict[str, Any]] = []
    for stage in STAGES:
        r = stages.get(stage)
        note = stage_available(stage, settings) or ""
        ok, skipped, failed = (int(r[k]) if r else 0 for k in ("documents_ok", "documents_skipped", "documents_failed"))
        rows.append(
            {
                "stage": stage,
                "documents": ok + skipped + failed,
                "ok": ok,
                "skipped": skipped,
                "failed": failed,
                "activities": int(r["activities"]) if r else 0,
                "seconds": round(float(r["duration_s"] or 0), 1) if r else 0.0,
                "backlog": backlog.get(stage, 0),
                "note": note,
            }
        )
    processed = sum(r["documents"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "sync": sync or {},
        "stages": rows,
        "parked": [dict(p) for p in parked],
        "processed": processed,
        "failed": failed,
        "failed_batches": [
            {
                "task": b.task,
                "state": b.state,
                "documents": len(b.ids),
                "log": log_url(b),
                "recorded_now": lost.get(b.task, 0),
            }
            for b in health.failed_batches
        ],
    }
    problems = [*health.task_problems, *health.stage_problems]
    if sync and sync.get("refused"):
        problems.append(f"registry sync {sync['refused']}")
    if failed >= settings.run_failure_min_count and failed > settings.run_failure_share * max(processed, 1):
        problems.append(
            f"{failed} of {processed} document stages failed (threshold "
            f"{settings.run_failure_share:.0%} and at least {settings.run_failure_min_count})"
        )
    summary["problems"] = problems
    log.info("run summary\n%s", format_summary(summary))
    if page is not None and (problems or health.failed_batches):
        page(run_alert_text(dag_id, run_id, summary))
    if problems:
        raise RunUnhealthy("; ".join(problems))
    return summary


def run_alert_text(dag_id: str, run_id: str, summary: dict[str, Any]) -> str:
    """The one Slack message of a run that went wrong: what failed, where to look."""
    from iati_refresher.alerts import task_log_url

    problems = summary.get("problems") or []
    if problems:
        lines = [f":red_circle: *{dag_id}* run `{run_id}` failed: {problems[0]}"]
        lines += [f"- {p}" for p in problems[1:]]
    else:
        lines = [f":warning: *{dag_id}* run `{run_id}`: some batch tasks failed after their retries"]
    for batch in summary.get("failed_batches") or []:
        verb = "failed after its retries" if batch["state"] == "failed" else f"did not run ({batch['state']})"
        lines.append(
            f"- *{dag_id}.{batch['task']}* {verb}; its {batch['documents']} documents are recorded "
            f"as failed (batch_failed) <{batch['log']}|View log>"
        )
    lines.append(f"Summary: <{task_log_url(dag_id, run_id, 'summary')}|View log>")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    sync = summary.get("sync") or {}
    if sync:
        if sync.get("skipped_unchanged"):
            lines.append("sync      registry index unchanged (ETag): nothing to sync")
        elif sync.get("refused"):
            lines.append(f"sync      {sync['refused']}")
        elif sync.get("skipped_reason"):
            lines.append(f"sync      skipped: {sync['skipped_reason']}")
        else:
            lines.append(
                f"sync      {sync.get('publishers', 0)} publishers; datasets +{sync.get('added', 0)} "
                f"~{sync.get('updated', 0)} -{sync.get('removed', 0)} ={sync.get('unchanged', 0)}"
                f"{'; rejected ' + str(sync['rejected']) if sync.get('rejected') else ''}"
            )
    for batch in summary.get("failed_batches") or []:
        lines.append(f"FAILED    {batch['task']}: {batch['state']} ({batch['documents']} documents) {batch['log']}")
    for problem in summary.get("problems") or []:
        lines.append(f"PROBLEM   {problem}")
    lines.append(
        f"{'stage':9} {'docs':>5} {'ok':>5} {'skip':>5} {'fail':>5} {'activities':>10} {'seconds':>8} {'backlog':>7}"
    )
    for r in summary["stages"]:
        lines.append(
            f"{r['stage']:9} {r['documents']:>5} {r['ok']:>5} {r['skipped']:>5} {r['failed']:>5} "
            f"{r['activities']:>10} {r['seconds']:>8} {r['backlog']:>7}  {r['note']}"
        )
    for p in summary.get("parked", []):
        lines.append(f"parked    {p['stage']}/{p['outcome']}/{p['code']}: {p['n']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# operator re-runs
# ---------------------------------------------------------------------------------------


def select_for_reprocess(
    datasets: Sequence[str], publishers: Sequence[str], settings: Settings | None = None
) -> list[dict[str, Any]]:
    if not datasets and not publishers:
        raise ValueError("give at least one dataset (id or name) or publisher (org id or name)")
    with database(settings) as conn:
        rows = repo.find_documents(conn, ids_or_names=list(datasets), publishers=list(publishers))
        conn.rollback()
    return [{"id": r["id"], "name": r["name"], "publisher": r["publisher_name"], "hash": r["hash"]} for r in rows]


def reset_for_reprocess(
    ids: Sequence[str], from_stage: str, *, force_redownload: bool, settings: Settings | None = None
) -> int:
    stage = "download" if force_redownload else from_stage
    with database(settings) as conn:
        n = repo.reset_documents(conn, ids, stage)
        conn.commit()
    return n


def process_selection(
    ids: Sequence[str], *, run_id: str, dag_id: str, settings: Settings | None = None, stages: Sequence[str] = STAGES
) -> list[dict[str, Any]]:
    """Run the given documents through the stages, in order (same stage code as the main DAG)."""
    settings = settings or get_settings()
    results = []
    for stage in stages:
        if stage_available(stage, settings):
            continue
        with database(settings) as conn:
            ready = [
                d["id"]
                for d in repo.ready_documents(
                    conn, stage, ids=list(ids), safety_period_s=settings.safety_check_period_s
                )
            ]
            conn.rollback()
        for start in range(0, len(ready), settings.batch_size):
            batch = {
                "stage": stage,
                "ids": ready[start : start + settings.batch_size],
                "label": "reprocess",
                "key": f"reprocess-{start // settings.batch_size:04d}",
            }
            results.append(run_batch(batch, run_id=run_id, dag_id=dag_id, settings=settings))
    return results


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    value = fn()
    return value, time.monotonic() - t0


def reprocess_preview(
    ids: Sequence[str], from_stage: str, *, force_redownload: bool, settings: Settings | None = None
) -> list[dict[str, Any]]:
    stage = "download" if force_redownload else from_stage
    with database(settings) as conn:
        rows = repo.reset_preview(conn, ids, stage)
        conn.rollback()
    return rows


# ---------------------------------------------------------------------------------------
# ad-hoc validation (for validator-services: a file the datastore has no report for)
# ---------------------------------------------------------------------------------------


def adhoc_source(url: str | None, blob: str | None) -> dict[str, str]:
    """What ``iati_adhoc_validate`` validates: exactly one of a URL or a blob of the ad-hoc container."""
    if bool(url) == bool(blob):
        raise ValueError("give exactly one of url or blob")
    return {"source": str(url or blob), "source_type": "url" if url else "blob"}


def save_adhoc_validation(
    result: dict[str, Any],
    *,
    filename: str | None,
    guid: str | None,
    session_id: str | None,
    user_email: str | None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Store an :class:`~iati_refresher.operators.IatiValidatorOperator` result in
    ``adhoc_validation`` as validator-services reads it.  Returns the row id and outcome."""
    row: dict[str, Any] = {"guid": guid, "filename": filename, "session_id": session_id, "user_email": user_email}
    report = result.get("report")
    if report is not None:
        row["report"] = report
        row["valid"] = bool(report.get("valid"))
        if result.get("status") not in (200, None):
            row["validation_api_error"] = str(result["status"])
    else:
        row["validation_api_error"] = str(result.get("error") or result.get("status"))
    with database(settings) as conn:
        row_id = repo.save_adhoc_validation(conn, row)
        conn.commit()
    return {"id": row_id, "valid": row.get("valid"), "validation_api_error": row.get("validation_api_error")}


# ---------------------------------------------------------------------------------------
# reconciliation
# ---------------------------------------------------------------------------------------


def reconcile_solr(settings: Settings | None = None) -> dict[str, Any]:
    """Remove Solr documents whose dataset is gone or whose version is not the indexed one."""
    from iati_refresher.solr_client import open_solr
    from iati_refresher.stages.index import reconcile

    settings = settings or get_settings()
    with open_solr(settings) as solr:
        if solr is None:
            return {"skipped": "no Solr connection ('solr') is configured"}
        with database(settings) as conn:
            expected = repo.indexed_versions(conn)
            conn.rollback()
        return reconcile(solr, expected, settings)


def orphaned_blobs(
    settings: Settings | None = None, *, chunk: int = 1000, max_chunks: int = 50
) -> list[dict[str, Any]]:
    """The blobs no document needs — source/clean files of hashes no document has, lake and
    flat blobs of datasets that left the registry, flat files of older versions — as
    ``{"container", "names"}`` chunks for :class:`~iati_refresher.operators.RefresherBlobOperator`
    (``remove``).  At most ``max_chunks`` chunks a run: the rest waits for the next.  Expired
    claims are deleted on the way."""
    from iati_refresher.stages.lakify import lake_bundle_name

    settings = settings or get_settings()
    with database(settings) as conn:
        hashes = repo.document_hashes(conn)
        repo.delete_expired_claims(conn)
        conn.commit()
    live_hashes = set(hashes.values())
    found: list[dict[str, Any]] = []

    def add(container: str, names: list[str]) -> None:
        for start in range(0, len(names), chunk):
            if len(found) < max_chunks:
                found.append({"container": container, "names": names[start : start + chunk]})

    with blob_store(settings) as blobs:
        for container in (settings.source_container, settings.clean_container):
            add(container, [n for n in blobs.list(container) if n.removesuffix(".xml") not in live_hashes])
        for container in (settings.lake_container, settings.flat_container):
            orphans = []
            for name in blobs.list(container):
                doc_id = name.split("/", 1)[0]
                if doc_id not in hashes or (
                    container == settings.flat_container
                    and name not in (f"{doc_id}/{hashes[doc_id]}.jsonl", lake_bundle_name(doc_id, hashes[doc_id]))
                ):
                    orphans.append(name)
            add(container, orphans)
    return found


def reconcile_blobs(settings: Settings | None = None) -> dict[str, int]:
    """Remove every orphaned blob (:func:`orphaned_blobs`) in this process; counts per container."""
    settings = settings or get_settings()
    counts: dict[str, int] = {}
    with blob_store(settings) as blobs:
        for part in orphaned_blobs(settings, max_chunks=10**9):
            counts[part["container"]] = counts.get(part["container"], 0) + blobs.delete(
                part["container"], part["names"]
            )
    return counts
