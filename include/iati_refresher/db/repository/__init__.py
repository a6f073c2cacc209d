"""Every SQL statement of the pipeline (migration files aside) lives in this package, one
module per area; import it as ``from iati_refresher.db import repository as repo``.

Conventions:

* timestamps are naive UTC (``NOW``), like the reference's columns;
* every "finish" statement is guarded by the document's hash, so the result of work on an
  old version never lands on a document whose content changed meanwhile;
* stage selection, claims and outcome records work on whole batches (one query per batch);
* statements are built only from literal module constants (``tests/unit/test_security.py``).

Functions take an open psycopg connection and leave transaction control to the caller
unless they say otherwise.  The modules: :mod:`.stage_sql` (each stage's SQL),
:mod:`.selection` (ready documents, claims), :mod:`.outcomes` (stage records),
:mod:`.stage_columns` (the reference's per-stage columns), :mod:`.validation` (reports),
:mod:`.registry` (sync), :mod:`.publishers` (safety), :mod:`.runs` (telemetry, summary),
:mod:`.operator` (re-runs, reconciliation), :mod:`.status` (the status page),
:mod:`.migrations`, :mod:`.common`.
"""

from __future__ import annotations

from iati_refresher.db.repository.common import NOW, one_row
from iati_refresher.db.repository.migrations import current_migration, lock_migrations, set_migration
from iati_refresher.db.repository.operator import (
    delete_expired_claims,
    document_hashes,
    find_documents,
    reset_documents,
    reset_preview,
)
from iati_refresher.db.repository.outcomes import record_outcomes, settle_request, stage_rows
from iati_refresher.db.repository.publishers import (
    flag_publishers,
    flagged_publishers,
    mark_notified,
    publishers_to_notify,
    unflag_publisher,
)
from iati_refresher.db.repository.registry import (
    RESET_ON_CHANGE,
    UNCHANGED_KEYS,
    count_documents,
    count_publishers,
    delete_document,
    delete_stale_publishers,
    documents_sharing_hash,
    record_registry_change,
    registry_changes,
    registry_state,
    save_registry_state,
    stale_documents,
    touch_unchanged_documents,
    upsert_document,
    upsert_publisher,
)
from iati_refresher.db.repository.runs import latest_run_id, parked_counts, record_telemetry, run_summary
from iati_refresher.db.repository.selection import (
    DOCUMENT_FIELDS,
    claim,
    count_ready,
    mark_started,
    ready_documents,
    release,
    renew_claims,
    stage_backlogs,
    unsettled_documents,
)
from iati_refresher.db.repository.stage_columns import (
    finish_clean,
    finish_download,
    finish_flatten,
    finish_index,
    finish_lakify,
    indexed_versions,
    mark_not_downloaded,
    mark_unindexed,
    reset_lakify,
)
from iati_refresher.db.repository.stage_sql import ORDER, READY, REQUEST_FLAGS, RESET_FROM, REVIVED_BY, START_COLUMN
from iati_refresher.db.repository.status import DOCUMENT_STATES, document_state_counts, document_status_rows
from iati_refresher.db.repository.validation import (
    latest_report_for_hash,
    latest_reports_for_hashes,
    reuse_validation,
    save_adhoc_validation,
    save_validation,
    set_schema_result,
    validation_reports,
)
from iati_refresher.stage_specs import STAGES

__all__ = [
    "DOCUMENT_FIELDS",
    "DOCUMENT_STATES",
    "NOW",
    "ORDER",
    "READY",
    "REQUEST_FLAGS",
    "RESET_FROM",
    "RESET_ON_CHANGE",
    "REVIVED_BY",
    "STAGES",
    "START_COLUMN",
    "UNCHANGED_KEYS",
    "claim",
    "count_documents",
    "count_publishers",
    "count_ready",
    "current_migration",
    "delete_document",
    "delete_expired_claims",
    "delete_stale_publishers",
    "document_hashes",
    "document_state_counts",
    "document_status_rows",
    "documents_sharing_hash",
    "find_documents",
    "finish_clean",
    "finish_download",
    "finish_flatten",
    "finish_index",
    "finish_lakify",
    "flag_publishers",
    "flagged_publishers",
    "indexed_versions",
    "latest_report_for_hash",
    "latest_reports_for_hashes",
    "latest_run_id",
    "lock_migrations",
    "mark_not_downloaded",
    "mark_notified",
    "mark_started",
    "mark_unindexed",
    "one_row",
    "parked_counts",
    "publishers_to_notify",
    "ready_documents",
    "record_outcomes",
    "record_registry_change",
    "record_telemetry",
    "registry_changes",
    "registry_state",
    "release",
    "renew_claims",
    "reset_documents",
    "reset_lakify",
    "reset_preview",
    "reuse_validation",
    "run_summary",
    "save_adhoc_validation",
    "save_registry_state",
    "save_validation",
    "set_migration",
    "set_schema_result",
    "settle_request",
    "stage_backlogs",
    "stage_rows",
    "stale_documents",
    "touch_unchanged_documents",
    "unflag_publisher",
    "unsettled_documents",
    "upsert_document",
    "upsert_publisher",
    "validation_reports",
]
