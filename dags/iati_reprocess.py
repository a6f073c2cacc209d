"""
# iati_reprocess — re-run chosen datasets from a chosen stage

For operators: trigger this DAG with the datasets (ids or names) and/or publishers
(org ids or names) to re-run, the stage to start from, and whether to download again.
`dry_run` is **on by default**: the run then only lists exactly which columns and parked
states it would reset — read the `select` and `preview` task logs / XComs, then trigger
again with `dry_run` off.

A real run resets those columns (the stage and every later one), forgets parked
"gave up"/"skipped" states for them, and processes the selection through the same stage
code as `iati_refresh`, in order. Documents a concurrent `iati_refresh` run is processing
are skipped by the claim and picked up by the next run.

## What healthy looks like
`process` ends green; its return value lists, per stage, documents ok / skipped / failed.
Failures are recorded per document (see the status page or `refresher status DATASET`).

## Examples
* one dataset again from validation: datasets `["my-org-activities"]`, from_stage `validate`
* a whole publisher, fresh downloads: publishers `["my-org"]`, force_redownload on
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from iati_refresher.alerts import on_failure
from iati_refresher.stage_specs import STAGES, first_stage, stages_from


@dag(
    dag_id="iati_reprocess",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["iati", "operations"],
    default_args={"owner": "iati-refresher", "retries": 2, "retry_delay": timedelta(minutes=1)},
    on_failure_callback=on_failure,
    params={
        # Optional each ("null" in the type): datasets or publishers is enough.
        "datasets": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="dataset ids or names (registry short names); these or publishers",
        ),
        "publishers": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            description="publisher org ids or short names; these or datasets",
        ),
        "from_stage": Param("download", type="string", enum=list(STAGES), description="first stage to redo"),
        "force_redownload": Param(False, type="boolean", description="download again (implies from download)"),
        "dry_run": Param(True, type="boolean", description="only list what would be reset"),
    },
)
def iati_reprocess():
    @task
    def select() -> list[dict]:
        from iati_refresher import pipeline

        params = get_current_context()["params"]
        selection = pipeline.select_for_reprocess(params["datasets"] or [], params["publishers"] or [])
        if not selection:
            raise ValueError("no dataset matches the given datasets / publishers")
        return selection

    @task
    def preview(selection: list[dict]) -> list[dict]:
        from iati_refresher import pipeline

        params = get_current_context()["params"]
        return pipeline.reprocess_preview(
            [d["id"] for d in selection], params["from_stage"], force_redownload=params["force_redownload"]
        )

    @task.short_circuit
    def not_a_dry_run() -> bool:
        return not get_current_context()["params"]["dry_run"]

    @task
    def reset(selection: list[dict]) -> int:
        from iati_refresher import pipeline

        params = get_current_context()["params"]
        return pipeline.reset_for_reprocess(
            [d["id"] for d in selection], params["from_stage"], force_redownload=params["force_redownload"]
        )

    @task
    def process(selection: list[dict]) -> list[dict]:
        from iati_refresher import pipeline

        context = get_current_context()
        params = context["params"]
        first = first_stage(params["from_stage"], force_redownload=params["force_redownload"])
        return pipeline.process_selection(
            [d["id"] for d in selection],
            run_id=context["run_id"],
            dag_id=context["dag"].dag_id,
            stages=stages_from(first),
        )

    selection = select()
    previewed = preview(selection)
    gate = not_a_dry_run()
    previewed >> gate
    gate >> reset(selection) >> process(selection)


iati_reprocess()
