"""The run's summary task: per-stage counts, the verdict, the one page for a run that went wrong."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from iati_refresher.db import repository as repo
from iati_refresher.pipeline.batches import record_lost_batches, unavailable_reason
from iati_refresher.pipeline.common import database, exception_text
from iati_refresher.run_health import FailedBatch, RunHealth, assess
from iati_refresher.settings import Settings, get_settings
from iati_refresher.stage_specs import STAGES

log = logging.getLogger(__name__)


class RunUnhealthy(RuntimeError):
    """The run's failures crossed the threshold: the summary task fails the run."""


def summarise_run(
    run_id: str,
    sync: dict[str, Any] | None,
    settings: Settings | None = None,
    *,
    dag_id: str = "iati_refresh",
    plans: dict[str, list[dict[str, Any]] | None] | None = None,
    task_states: dict[str, Any] | None = None,
    page: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Per-stage counts of this run, backlogs and parked documents, and the verdict.

    With ``plans`` (each plan task's batches) and ``task_states`` (Airflow's state of every
    task instance of the run), batch tasks that failed after their retries or never ran
    are found, their untouched documents recorded as failed (:func:`record_lost_batches`),
    and counted.  ``page`` is called once with everything that went wrong beyond
    per-document data.  Raises :class:`RunUnhealthy` (failing the run) when a stage could
    not run or every batch of a stage failed, another task failed, the sync was refused, or
    the failed documents cross the threshold.  When the summary itself cannot run (the
    database is away), it pages that before failing: the DAG callback leaves it to us.
    """
    try:
        return _summarise_run(run_id, sync, settings, dag_id=dag_id, plans=plans, task_states=task_states, page=page)
    except RunUnhealthy:
        raise
    except Exception as exc:
        if page is not None:
            from iati_refresher.alerts import task_log_url

            page(
                f":red_circle: *{dag_id}* run `{run_id}` failed: the summary could not assess it "
                f"({exception_text(exc)}) <{task_log_url(dag_id, run_id, 'summary')}|View log>"
            )
        raise


def _summarise_run(
    run_id: str,
    sync: dict[str, Any] | None,
    settings: Settings | None,
    *,
    dag_id: str,
    plans: dict[str, list[dict[str, Any]] | None] | None,
    task_states: dict[str, Any] | None,
    page: Callable[[str], Any] | None,
) -> dict[str, Any]:
    from iati_refresher.alerts import task_log_url

    settings = settings or get_settings()
    health = assess(STAGES, plans or {}, task_states) if task_states is not None else RunHealth()

    def log_url(batch: FailedBatch) -> str:
        return task_log_url(dag_id, run_id, batch.stage, batch.map_index)

    lost = (
        record_lost_batches(health.failed_batches, run_id=run_id, dag_id=dag_id, settings=settings, log_url=log_url)
        if health.failed_batches
        else {}
    )
    with database(settings) as conn:
        stages = {r["stage"]: r for r in repo.run_summary(conn, run_id)}
        backlog = repo.stage_backlogs(conn, safety_period_s=settings.safety_check_period_s)
        parked = repo.parked_counts(conn)
        conn.rollback()
    rows: list[dict[str, Any]] = []
    for stage in STAGES:
        r = stages.get(stage)
        note = unavailable_reason(stage, settings) or ""
        ok, skipped, failed = (int(r[k]) if r else 0 for k in ("documents_ok", "documents_skipped", "documents_failed"))
        rows.append(
            {
                "stage": stage,
                "documents": ok + skipped + failed,
                "ok": ok,
                "skipped": skipped,
                "failed": failed,
                "activities": int(r["activities"]) if r else 0,
                "seconds": round(float(r["duration_s"] or 0), 1) if r else 0.0,
                "backlog": backlog.get(stage, 0),
                "note": note,
            }
        )
    processed = sum(r["documents"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "sync": sync or {},
        "stages": rows,
        "parked": [dict(p) for p in parked],
        "processed": processed,
        "failed": failed,
        "failed_batches": [
            {
                "task": b.task,
                "state": b.state,
                "documents": len(b.ids),
                "log": log_url(b),
                "recorded_now": lost.get(b.task, 0),
            }
            for b in health.failed_batches
        ],
    }
    problems = [*health.task_problems, *health.stage_problems]
    if sync and sync.get("refused"):
        problems.append(f"registry sync {sync['refused']}")
    if failed >= settings.run_failure_min_count and failed > settings.run_failure_share * max(processed, 1):
        problems.append(
            f"{failed} of {processed} document stages failed (threshold "
            f"{settings.run_failure_share:.0%} and at least {settings.run_failure_min_count})"
        )
    summary["problems"] = problems
    log.info("run summary\n%s", format_summary(summary))
    if page is not None and (problems or health.failed_batches):
        page(run_alert_text(dag_id, run_id, summary))
    if problems:
        raise RunUnhealthy("; ".join(problems))
    return summary


def run_alert_text(dag_id: str, run_id: str, summary: dict[str, Any]) -> str:
    """The one Slack message of a run that went wrong: what failed, where to look."""
    from iati_refresher.alerts import task_log_url

    problems = summary.get("problems") or []
    if problems:
        lines = [f":red_circle: *{dag_id}* run `{run_id}` failed: {problems[0]}"]
        lines += [f"- {p}" for p in problems[1:]]
    else:
        lines = [f":warning: *{dag_id}* run `{run_id}`: some batch tasks failed after their retries"]
    for batch in summary.get("failed_batches") or []:
        verb = "failed after its retries" if batch["state"] == "failed" else f"did not run ({batch['state']})"
        lines.append(
            f"- *{dag_id}.{batch['task']}* {verb}; its {batch['documents']} documents are recorded "
            f"as failed (batch_failed) <{batch['log']}|View log>"
        )
    lines.append(f"Summary: <{task_log_url(dag_id, run_id, 'summary')}|View log>")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    sync = summary.get("sync") or {}
    if sync:
        if sync.get("skipped_unchanged"):
            lines.append("sync      registry index unchanged (ETag): nothing to sync")
        elif sync.get("refused"):
            lines.append(f"sync      {sync['refused']}")
        elif sync.get("skipped_reason"):
            lines.append(f"sync      skipped: {sync['skipped_reason']}")
        else:
            lines.append(
                f"sync      {sync.get('publishers', 0)} publishers; datasets +{sync.get('added', 0)} "
                f"~{sync.get('updated', 0)} -{sync.get('removed', 0)} ={sync.get('unchanged', 0)}"
                f"{'; rejected ' + str(sync['rejected']) if sync.get('rejected') else ''}"
            )
    for batch in summary.get("failed_batches") or []:
        lines.append(f"FAILED    {batch['task']}: {batch['state']} ({batch['documents']} documents) {batch['log']}")
    for problem in summary.get("problems") or []:
        lines.append(f"PROBLEM   {problem}")
    lines.append(
        f"{'stage':9} {'docs':>5} {'ok':>5} {'skip':>5} {'fail':>5} {'activities':>10} {'seconds':>8} {'backlog':>7}"
    )
    for r in summary["stages"]:
        lines.append(
            f"{r['stage']:9} {r['documents']:>5} {r['ok']:>5} {r['skipped']:>5} {r['failed']:>5} "
            f"{r['activities']:>10} {r['seconds']:>8} {r['backlog']:>7}  {r['note']}"
        )
    for p in summary.get("parked", []):
        lines.append(f"parked    {p['stage']}/{p['outcome']}/{p['code']}: {p['n']}")
    return "\n".join(lines)
