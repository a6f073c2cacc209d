"""
# iati_unflag_publisher — lift a publisher's safety flag

The publisher safety check flags a publisher that downloads more than
`REFRESHER_SAFETY_CHECK_THRESHOLD` schema-invalid files within
`REFRESHER_SAFETY_CHECK_PERIOD_S`; its schema-invalid files then skip full validation
(and so partial ingestion) until the flag is lifted. Slack is told once per flag.

## How to unflag
Trigger this DAG with `publisher` = the publisher's short name or org id after the
publisher has fixed its files (or to accept them).

## What healthy looks like
The task returns the org ids
unflagged; it fails when no flagged publisher matches, so a typo is visible.
The next `iati_refresh` run validates the publisher's waiting files.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from iati_refresher.alerts import on_failure


@dag(
    dag_id="iati_unflag_publisher",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["iati", "operations", "validation"],
    default_args={"owner": "iati-refresher", "retries": 2, "retry_delay": timedelta(minutes=1)},
    on_failure_callback=on_failure,
    params={"publisher": Param("", type="string", minLength=1, description="publisher short name or org id")},
)
def iati_unflag_publisher():
    @task(retries=0)
    def unflag() -> list[str]:
        from iati_refresher import pipeline

        publisher = get_current_context()["params"]["publisher"].strip()
        unflagged = pipeline.unflag_publisher(publisher)
        if not unflagged:
            raise ValueError(f"no flagged publisher with short name or org id {publisher!r}")
        return unflagged

    unflag()


iati_unflag_publisher()
