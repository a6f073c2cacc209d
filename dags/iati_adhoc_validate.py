"""
# iati_adhoc_validate — validate one file on request

## What it does
For validator-services (and people): validate one file the datastore has no report for —
either a URL (downloaded with the pipeline's safe downloader) or a blob already uploaded to
the ad-hoc container (`REFRESHER_ADHOC_CONTAINER`, default `validator-adhoc`). The result
is stored in `adhoc_validation` (guid, filename, session_id, user_email, report, valid,
validation_api_error) exactly as validator-services reads it.

## What healthy looks like
The task returns the new `adhoc_validation.id`. A file that cannot be fetched or
validated still gets a row, with `validation_api_error` saying why.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from iati_refresher.alerts import on_failure


@dag(
    dag_id="iati_adhoc_validate",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["iati", "validation"],
    default_args={"owner": "iati-refresher", "retries": 2, "retry_delay": timedelta(minutes=1)},
    on_failure_callback=on_failure,
    params={
        "url": Param(None, type=["null", "string"], description="a file URL to validate"),
        "blob": Param(None, type=["null", "string"], description="or: a blob name in the ad-hoc container"),
        "filename": Param(None, type=["null", "string"]),
        "guid": Param(None, type=["null", "string"]),
        "session_id": Param(None, type=["null", "string"]),
        "user_email": Param(None, type=["null", "string"]),
    },
)
def iati_adhoc_validate():
    @task(pool="iati_validator")
    def validate() -> dict:
        from iati_refresher import pipeline

        p = get_current_context()["params"]
        return pipeline.adhoc_validate(url=p["url"], blob=p["blob"], filename=p["filename"], guid=p["guid"],
                                       session_id=p["session_id"], user_email=p["user_email"])

    validate()


iati_adhoc_validate()
