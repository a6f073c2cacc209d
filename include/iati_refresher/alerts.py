"""Alerts: one place that decides what pages the on-call engineer, and how.

Pages go to Slack through the slack provider (connection ``slack_oncall``, an incoming
webhook); with no such connection they are logged only.

* The ``summary`` task of ``iati_refresh`` pages **once per run** when anything in the run
  went wrong beyond per-document data: a batch task that failed after its retries (named,
  with its log link), a stage that could not run, the failure threshold, a refused sync.
* The DAG-level failure callback pages for the rest (a run that timed out, a task other
  than the summary that failed the run); it stays quiet when the summary failed the run,
  because the summary has paged already, with the details.
* Per-dataset failures are data (recorded per document), never pages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from iati_refresher.connections import SLACK, get_connection

log = logging.getLogger(__name__)


class RedactWebhookTokens(logging.Filter):
    """Hides the token of a Slack webhook URL (everything after ``/services/``) in a record.

    The Slack client logs the full webhook URL when it retries a request, and the URL is
    the secret.
    """

    TOKEN = re.compile(r"(/services/)[^\s'\"<>]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.TOKEN.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# What the Slack client logs goes through this logger, never with the token.
_slack_client_log = logging.getLogger(f"{__name__}.slack_client")
_slack_client_log.addFilter(RedactWebhookTokens())


def slack_configured() -> bool:
    return get_connection(SLACK) is not None


def slack_sender() -> Callable[[str], None] | None:
    """A function posting a text to the on-call Slack channel, or None when not configured."""
    if not slack_configured():
        return None
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    hook = SlackWebhookHook(slack_webhook_conn_id=SLACK, logger=_slack_client_log)

    def send(text: str) -> None:
        hook.send_text(text)

    return send


def failure_message(context: Mapping[str, Any]) -> str | None:
    """The Slack text for a failure callback's context, or None for noise (upstream failures).

    A task-level context names the task (with its map index and, for mapped tasks, the
    rendered name), the try and the exception.  A DAG-level context carries the task
    that failed last as ``ti`` — or no task at all when the run failed for another reason
    (a deadlock, a timeout): then the DAG, run and reason are reported.
    """
    ti = context.get("task_instance") or context.get("ti")
    reason = context.get("reason")
    if ti is None:
        dag = context.get("dag")
        dag_id = getattr(dag, "dag_id", None) or context.get("dag_id") or "?"
        run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None) or "?"
        return f":red_circle: *{dag_id}* run `{run_id}` failed: {reason or 'no task failure recorded'}"
    state = str(getattr(ti, "state", "") or "")
    if state.endswith("upstream_failed"):
        return None
    dag_id = getattr(ti, "dag_id", "?")
    run_id = getattr(ti, "run_id", "?")
    map_index = getattr(ti, "map_index", -1)
    task = ti.task_id
    if map_index is not None and map_index >= 0:
        label = getattr(ti, "rendered_map_index", None)
        task += f"[{map_index}{': ' + label if label else ''}]"
    tries = getattr(ti, "try_number", "?")
    exc = context.get("exception")
    detail = f"{type(exc).__name__}: {exc}" if exc else (f"reason: {reason}; see the log" if reason else "see the log")
    log_url = getattr(ti, "log_url", None) or ""
    return f":red_circle: *{dag_id}.{task}* failed (run `{run_id}`, try {tries})\n{detail}" + (
        f"\n<{log_url}|View log>" if log_url else ""
    )


#: The task that pages for its own run (see the module docstring).
SUMMARY_TASK = "summary"


def on_failure(context: Mapping[str, Any]) -> None:
    """DAG-level ``on_failure_callback``: Slack when configured, else a log line only."""
    ti = context.get("task_instance") or context.get("ti")
    if ti is not None and getattr(ti, "task_id", None) == SUMMARY_TASK:
        log.info("the summary task failed the run and paged for it: not paging again")
        return
    text = failure_message(context)
    if text is None:
        return
    page(text)


def page(text: str) -> bool:
    """Post ``text`` to the on-call channel; True when it was posted.  Never raises: an alert
    that fails must not hide the failure it reports."""
    send = slack_sender()
    if send is None:
        log.info("no %s connection: not paging: %s", SLACK, text.splitlines()[0])
        return False
    try:
        send(text)
    except Exception:
        log.exception("could not post the failure alert to Slack")
        return False
    return True


def task_log_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Airflow UI page of one task instance (its log), as Airflow itself builds it."""
    from urllib.parse import quote

    try:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback="http://localhost:8080/")
    except Exception:  # outside Airflow (CLI): the default
        base_url = "http://localhost:8080/"
    mapped = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}{mapped}"
