"""
# iati_adhoc_validate — validate one file on request

## What it does
For validator-services (and people): validate one file the datastore has no report for —
either a URL (downloaded with the pipeline's safe downloader) or a blob already uploaded to
the ad-hoc container (`REFRESHER_ADHOC_CONTAINER`, default `validator-adhoc`). The result
is stored in `adhoc_validation` (guid, filename, session_id, user_email, report, valid,
validation_api_error) exactly as validator-services reads it.

`choose` picks the source, `validate` is the provider's `IatiValidatorOperator` (the IATI
Validator API of `iati_validator`, or the built-in validator where configured so), `save`
writes the row.

## What healthy looks like
The `save` task returns the new `adhoc_validation.id`. A file that cannot be fetched or
validated still gets a row, with `validation_api_error` saying why.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from iati_refresher.alerts import on_failure
from iati_refresher.operators import IatiValidatorOperator


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
    @task(multiple_outputs=True)
    def choose() -> dict:
        from iati_refresher import pipeline

        p = get_current_context()["params"]
        return pipeline.adhoc_source(p["url"], p["blob"])

    chosen = choose()
    validate = IatiValidatorOperator(
        task_id="validate",
        pool="iati_validator",
        source=chosen["source"],
        source_type=chosen["source_type"],
        meta=False,
        fail_on_fetch_error=False,  # a file that cannot be fetched still gets its row, with the reason
    )

    @task
    def save(result: dict) -> dict:
        from iati_refresher import pipeline

        p = get_current_context()["params"]
        return pipeline.save_adhoc_validation(
            result,
            filename=p["filename"] or p["url"] or p["blob"],
            guid=p["guid"],
            session_id=p["session_id"],
            user_email=p["user_email"],
        )

    save(validate.output)


iati_adhoc_validate()
