"""
# iati_refresh — keep the IATI datastore fresh

Every 15 minutes (`REFRESHER_REFRESH_SCHEDULE`): **preflight** (the deployment can run the pipeline; its log names the
backend of every stage) → **migrate** the refresher database → **sync** the registry (IATI Bulk
Data Service index, skipped cheaply when its ETag is unchanged) → **download** changed
datasets → publisher **safety check** → **validate** → **clean** → **flatten** →
**lakify** → **index** into Solr → **summary**.  Each document stage is mapped over
batches of documents ready for it; each mapped instance is named after its first dataset.

## What healthy looks like
* Runs are green and short when the registry did not change (sync says "unchanged").
* The **summary** task's log shows a table per stage (documents, ok, skipped, failed,
  backlog).  Skipped and failed *documents* are normal (broken publisher files, 404s,
  schema-invalid data): they are recorded per document, retried with backoff where that can
  help, and parked as "gave up" after `REFRESHER_MAX_ATTEMPTS`.  The run only fails when
  more than `REFRESHER_RUN_FAILURE_SHARE` of the documents failed, or the sync was refused.
* A red **sync** summary line "refused: …" means the registry lost more than half of the
  known publishers or datasets: nothing was deleted. Check the Bulk Data Service first.
* The run pages on-call once (Slack) when anything went wrong beyond per-document data: a
  batch task that failed after its retries (its documents are then recorded as failed,
  code `batch_failed`, and retried by a later run), a stage that could not run, a refused
  sync, the failure threshold.  A run longer than `REFRESHER_RUN_TIMEOUT_S` (6 h) fails
  and pages, so a hung run never blocks the schedule for long.

## When something is red
* A failed mapped batch: open its log (the map index name is the first dataset in the
  batch; the page and the summary log link to it); clear the instance to retry it —
  documents already done are not redone.  The summary lists it as `FAILED`.
* `preflight` failed: its log says what the deployment lacks (e.g. a shared blob store
  for Celery workers).
* `summary` failed: its log lists the failure codes; see the status page
  (*Browse → IATI datasets*) or `refresher status DATASET`.
* `migrate` failed: the database is at an unexpected migration; run `refresher db current`.

## Re-run one dataset
Trigger **iati_reprocess** with the dataset's name or id, the stage to start from, and
`dry_run` off (a dry run first shows what would be reset).  Unflag a publisher with
**iati_unflag_publisher**.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import TriggerRule, dag, get_current_context, task

from iati_refresher.alerts import on_failure
from iati_refresher.settings import get_settings
from iati_refresher.stage_specs import SPECS, StageSpec, load

SETTINGS = get_settings()  # environment only: no I/O


@dag(
    dag_id="iati_refresh",
    schedule=SETTINGS.refresh_cron,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(seconds=SETTINGS.run_timeout_s),
    doc_md=__doc__,
    tags=["iati", "refresher"],
    default_args={
        "owner": "iati-refresher",
        "retries": 2,
        "retry_delay": timedelta(seconds=SETTINGS.task_retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
    },
    on_failure_callback=on_failure,
)
def iati_refresh():
    @task(retries=0)  # a verdict on the configuration: retrying cannot change it
    def preflight() -> dict:
        from iati_refresher import pipeline

        return pipeline.preflight()

    @task
    def migrate_database() -> dict:
        from iati_refresher import pipeline

        return pipeline.migrate_database()

    @task
    def sync_registry() -> dict:
        from iati_refresher import pipeline

        context = get_current_context()
        return pipeline.sync_registry(context["run_id"])

    @task(trigger_rule=TriggerRule.ALL_DONE)  # also when no download batch ran
    def safety_check() -> dict:
        from iati_refresher import alerts, pipeline

        return pipeline.safety_check(send_slack=alerts.slack_sender())

    def plan(stage: str):
        @task(task_id=f"plan_{stage}", trigger_rule=TriggerRule.ALL_DONE)
        def plan_batches() -> list[dict]:
            from iati_refresher import pipeline

            return pipeline.plan_batches(stage)

        return plan_batches()

    def run(stage: StageSpec, batches):
        batch_task: dict[str, Any] = {
            "task_id": stage.name,
            "pool": stage.pool,
            "map_index_template": "{{ batch_label }}",
            "retries": 2,
            "execution_timeout": timedelta(seconds=SETTINGS.batch_timeout_s),
            "on_failure_callback": None,  # the summary pages once for all failed batches of the run
        }
        if stage.batch_operator:  # a provider operator (index: SolrIndexOperator), mapped over the batches
            return load(stage.batch_operator).partial(**batch_task).expand(batch=batches)

        @task(**batch_task)
        def run_batch(batch: dict) -> dict:
            from iati_refresher import pipeline

            context = get_current_context()
            context["batch_label"] = batch["label"]  # type: ignore[typeddict-unknown-key]  # map_index_template
            ti = context["ti"]
            return pipeline.run_batch(
                batch,
                run_id=context["run_id"],
                dag_id=ti.dag_id,
                final_try=pipeline.is_final_try(ti),
                task_label=f"{stage.name}[{ti.map_index}: {batch['label']}]",
            )

        return run_batch.expand(batch=batches)

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)  # a verdict, not a flaky call: never retried
    def summary(sync: dict | None, plans: dict) -> dict:
        from iati_refresher import alerts, metrics, pipeline

        ti = get_current_context()["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
        metrics.emit_pipeline_gauges()
        return pipeline.summarise_run(
            ti.run_id, sync, dag_id=ti.dag_id, plans=plans, task_states=states, page=alerts.page
        )

    checked_config = preflight()
    migrated = migrate_database()
    synced = sync_registry()
    checked_config >> migrated >> synced
    previous = synced
    plans = {}
    for stage in SPECS:
        batches = plans[stage.name] = plan(stage.name)
        previous >> batches
        if stage.name == "validate":  # the publisher safety check holds back flooding publishers' files
            checked = safety_check()
            previous >> checked >> batches
        previous = run(stage, batches)
    previous >> summary(synced, plans)


iati_refresh()
