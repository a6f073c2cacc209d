"""
# iati_reconcile — remove what no dataset needs any more

Daily. Finds Solr documents (activity, transaction and budget collections) whose dataset
left the registry or whose version is not the one the database says is indexed, and
removes them; removes blobs no document needs (source/clean files of old hashes, lake and
flattened files of removed datasets); expires abandoned document claims.

## What healthy looks like
Small numbers (zero most days). Large numbers after an outage of Solr or blob
storage are expected: the sync recorded clean-up errors and this DAG finishes the job.
It never touches the current version of a dataset, so search has no gap.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from iati_refresher.alerts import on_failure
from iati_refresher.operators import RefresherBlobOperator


@dag(
    dag_id="iati_reconcile",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["iati", "maintenance"],
    default_args={"owner": "iati-refresher", "retries": 2, "retry_delay": timedelta(minutes=5)},
    on_failure_callback=on_failure,
)
def iati_reconcile():
    @task(pool="solr")
    def reconcile_solr() -> dict:
        from iati_refresher import pipeline

        return pipeline.reconcile_solr()

    @task
    def find_orphaned_blobs() -> list[dict]:
        from iati_refresher import pipeline

        return pipeline.orphaned_blobs()

    orphans = find_orphaned_blobs()
    removed = RefresherBlobOperator.partial(
        task_id="remove_orphaned_blobs", action="remove", map_index_template="{{ task.container }}"
    ).expand_kwargs(orphans)
    reconcile_solr() >> orphans >> removed


iati_reconcile()
