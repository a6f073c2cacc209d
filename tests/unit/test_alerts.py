"""Failure alerts through the real slack provider hook, posted to a loopback Slack stand-in.

Contexts are built the way Airflow builds them for a callback: a ``RuntimeTaskInstance``
of a real (mapped) task and its ``get_template_context()`` (public SDK modules only: no
run context from the API server, which the alerts do not read).
"""

from __future__ import annotations

import logging
import uuid

import pendulum
import pytest

from iati_refresher import alerts, connections
from tests.standins.slack_server import SlackWebhookServer
from tests.support import services

RUN_ID = "scheduled__2026-03-01T12:00:00+00:00"


@pytest.fixture(autouse=True)
def _connections_from_the_environment(monkeypatch):
    """Connections come from this test's AIRFLOW_CONN_* variables, not from a value another
    in-process test preloaded (``connections.preload`` lasts for the process)."""
    monkeypatch.setattr(connections, "_PRELOADED", {})


@pytest.fixture
def slack(monkeypatch):
    with SlackWebhookServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ONCALL", server.connection_json())
        yield server


def callback_context(
    *,
    state: str = "failed",
    map_index: int = 3,
    try_number: int = 2,
    rendered_map_index: str | None = "meadowlark-activities +2",
    exception: BaseException | None = None,
) -> dict:
    """The context a failure callback receives for a task instance of a mapped task."""
    from airflow.sdk import DAG, task
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    with DAG("iati_refresh", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task
        def download(batch: dict) -> None: ...

        download.expand(batch=[{}, {}])
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        dag_version_id=uuid.uuid4(),
        task_id="download",
        dag_id=dag.dag_id,
        run_id=RUN_ID,
        try_number=try_number,
        map_index=map_index,
        state=state,
        rendered_map_index=rendered_map_index,
        task=dag.get_task("download"),
    )
    context = ti.get_template_context()
    context["reason"] = "task_failure"
    if exception is not None:
        context["exception"] = exception
    return context


def test_message_names_dag_task_run_try_exception_and_log(slack):
    alerts.on_failure(callback_context(exception=ValueError("batch 0003 exploded")))
    assert len(slack.messages) == 1
    message = slack.messages[0]
    assert message.path == "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    text = message.text
    assert text.startswith(":red_circle: *iati_refresh.download[3: meadowlark-activities +2]* failed")
    assert f"(run `{RUN_ID}`, try 2)" in text
    assert "ValueError: batch 0003 exploded" in text
    log_url = text.rsplit("<", 1)[1]
    assert log_url.startswith("http")
    assert "/dags/iati_refresh/runs/scheduled__2026-03-01T12%3A00%3A00%2B00%3A00/tasks/download/mapped/3" in log_url
    assert log_url.endswith("?try_number=2|View log>")


def test_unmapped_task_has_no_map_index():
    text = alerts.failure_message(callback_context(map_index=-1, rendered_map_index=None, try_number=1))
    assert text.startswith(":red_circle: *iati_refresh.download* failed (run ")
    assert "\nreason: task_failure; see the log\n" in text


def test_upstream_failed_is_not_paged(slack):
    alerts.on_failure(callback_context(state="upstream_failed"))
    assert slack.attempts == 0
    assert slack.messages == []


def test_dag_failure_without_a_task_still_pages(slack):
    from airflow.sdk import DAG

    context = {"dag": DAG("iati_refresh", schedule=None), "run_id": RUN_ID, "reason": "all_tasks_deadlocked"}
    alerts.on_failure(context)
    assert [m.text for m in slack.messages] == [
        f":red_circle: *iati_refresh* run `{RUN_ID}` failed: all_tasks_deadlocked"
    ]


def test_the_connection_form_shape_works_too(monkeypatch):
    with SlackWebhookServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ONCALL", server.connection_json("T1/B2/C3", split=True))
        alerts.on_failure(callback_context())
        assert [m.path for m in server.messages] == ["/services/T1/B2/C3"]


def test_no_slack_connection_is_silent(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ONCALL", raising=False)
    assert alerts.slack_sender() is None
    with caplog.at_level(logging.INFO, logger="iati_refresher.alerts"):
        alerts.on_failure(callback_context())
    assert any("no slack_oncall connection: not paging" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name == "iati_refresher.alerts")


@pytest.mark.parametrize(("status", "error"), [(500, "rollup_error"), (404, "no_service"), (403, "invalid_token")])
def test_a_slack_error_does_not_raise(slack, caplog, status, error):
    slack.fail_next(status, error)
    with caplog.at_level(logging.ERROR, logger="iati_refresher.alerts"):
        alerts.on_failure(callback_context(exception=RuntimeError("boom")))
    assert slack.attempts == 1
    assert slack.messages == []
    assert any("could not post the failure alert" in r.getMessage() for r in caplog.records)


def test_slack_unreachable_does_not_raise(monkeypatch, caplog):
    port = services.free_port()  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_ONCALL",
        f'{{"conn_type": "slackwebhook", "password": "http://127.0.0.1:{port}/services/T/B/C", '
        '"extra": {"timeout": 2}}',
    )
    with caplog.at_level(logging.ERROR, logger="iati_refresher.alerts"):
        alerts.on_failure(callback_context())
    assert any("could not post the failure alert" in r.getMessage() for r in caplog.records)


def test_the_standin_rejects_what_slack_rejects(slack):
    import httpx

    assert httpx.post(slack.webhook_url(), content=b"not json").text == "invalid_payload"
    assert httpx.post(slack.webhook_url(), json={"channel": "x"}).status_code == 400
    assert httpx.post(f"{slack.url}/elsewhere", json={"text": "hi"}).text == "no_service"
    assert httpx.post(slack.webhook_url(), json={"text": "hi"}).text == "ok"
    assert [m.text for m in slack.messages] == ["hi"]
