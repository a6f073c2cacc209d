"""What the DAG tasks call: each function is one task body's worth of work.

This package is the only place that combines the database, the clients and the stage
functions.  Every function opens its own database connection (tasks run in separate
processes), checks the schema version first, and returns plain JSON-able values (they
travel through XCom).  By area:

* :mod:`.preflight` — the deployment check that opens every run;
* :mod:`.registry_sync` — the sync task and the removal of what left the registry;
* :mod:`.batches` — per-document stages as batches: plan, run (claims, workers), lost batches;
* :mod:`.recording` — the outcome-recording rules (prepare a batch, write one outcome);
* :mod:`.claims` — the batch's leases and the thread renewing them;
* :mod:`.summary` — the run's summary, verdict and page;
* :mod:`.reprocess` — operator re-runs;
* :mod:`.maintenance` — migration, publisher safety, ad-hoc validation, reconciliation.

The names below are what DAGs, operators, the CLI and the tests import from here.
"""

from __future__ import annotations

from iati_refresher.log_noise import quiet_noisy_loggers
from iati_refresher.pipeline.batches import (
    chunk_documents,
    is_final_try,
    plan_batches,
    record_lost_batches,
    run_batch,
    unavailable_reason,
)
from iati_refresher.pipeline.claims import ClaimKeeper, batch_owner
from iati_refresher.pipeline.common import database, utcnow
from iati_refresher.pipeline.maintenance import (
    adhoc_source,
    containers,
    migrate_database,
    orphaned_blobs,
    reconcile_blobs,
    reconcile_solr,
    remove_from_index,
    safety_check,
    save_adhoc_validation,
    unflag_publisher,
)
from iati_refresher.pipeline.preflight import LOCAL_EXECUTORS, PreflightFailed, airflow_executor, preflight
from iati_refresher.pipeline.recording import withdraw_old_version
from iati_refresher.pipeline.registry_sync import (
    remove_dataset_everywhere,
    remove_version_blobs,
    sync_registry,
)
from iati_refresher.pipeline.reprocess import (
    process_selection,
    reprocess_preview,
    reset_for_reprocess,
    select_for_reprocess,
)
from iati_refresher.pipeline.summary import RunUnhealthy, format_summary, run_alert_text, summarise_run
from iati_refresher.stage_specs import EXCLUDES_FROM_DATASTORE, STAGES

quiet_noisy_loggers()

__all__ = [
    "EXCLUDES_FROM_DATASTORE",
    "LOCAL_EXECUTORS",
    "STAGES",
    "ClaimKeeper",
    "PreflightFailed",
    "RunUnhealthy",
    "adhoc_source",
    "airflow_executor",
    "batch_owner",
    "chunk_documents",
    "containers",
    "database",
    "format_summary",
    "is_final_try",
    "migrate_database",
    "orphaned_blobs",
    "plan_batches",
    "preflight",
    "process_selection",
    "reconcile_blobs",
    "reconcile_solr",
    "record_lost_batches",
    "remove_dataset_everywhere",
    "remove_from_index",
    "remove_version_blobs",
    "reprocess_preview",
    "reset_for_reprocess",
    "run_alert_text",
    "run_batch",
    "safety_check",
    "save_adhoc_validation",
    "select_for_reprocess",
    "summarise_run",
    "sync_registry",
    "unavailable_reason",
    "unflag_publisher",
    "utcnow",
    "withdraw_old_version",
]
