"""Pipeline gauges: the reference's Prometheus gauges, computed from the refresher database.

Two outlets share :func:`collect`:

* the status plugin serves them as Prometheus text at ``/iati-status/metrics``
  (:func:`render_prometheus`);
* the run's summary task pushes them through Airflow's own metrics (StatsD or
  OpenTelemetry, whatever ``[metrics]`` configures) with :func:`emit_stats`.

The names without labels are the reference's (``registered_publishers``,
``datasets_to_download`` …), so existing dashboards keep working; the reference's
``datasets_to_solrize`` is ``datasets_to_index`` here, as the stage is called.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db
from iati_refresher.settings import Settings, get_settings
from iati_refresher.stage_specs import STAGES

log = logging.getLogger(__name__)

STATS_PREFIX = "iati_refresher"

HELP = {
    "registered_publishers": "Publishers known from the registry.",
    "registered_datasets": "Datasets (documents) known from the registry.",
    "flagged_publishers": "Publishers paused by the safety check (too many schema-invalid files).",
    "datasets_in_state": "Datasets by the furthest pipeline state reached (or parked).",
    "datasets_parked": "Datasets a stage skipped by rule or gave up on, by stage, outcome and code.",
    "datasets_retrying": "Datasets whose last attempt at a stage failed and will be retried, by stage and code.",
    "last_run_documents": "Documents each stage processed in the last run, by outcome.",
    "last_run_duration_seconds": "Wall time of each stage in the last run.",
    **{f"datasets_to_{stage}": f"Datasets ready for the {stage} stage now." for stage in STAGES},
}


@dataclass(frozen=True)
class Gauge:
    """One gauge sample: a metric name, its labels and a value."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def help(self) -> str:
        return HELP.get(self.name, "")


def collect(conn: Db, settings: Settings | None = None) -> list[Gauge]:
    """Every gauge, read from the refresher database in one short read-only pass.

    :param conn: an open refresher database connection (dict rows); the transaction it
        opens is rolled back.
    """
    settings = settings or get_settings()
    try:
        gauges = [
            Gauge("registered_publishers", repo.count_publishers(conn)),
            Gauge("registered_datasets", repo.count_documents(conn)),
            Gauge("flagged_publishers", len(repo.flagged_publishers(conn))),
        ]
        backlogs = repo.stage_backlogs(conn, safety_period_s=settings.safety_check_period_s)
        gauges += [Gauge(f"datasets_to_{stage}", backlogs.get(stage, 0)) for stage in STAGES]
        gauges += [
            Gauge("datasets_in_state", n, {"state": state}) for state, n in repo.document_state_counts(conn).items()
        ]
        for row in repo.parked_counts(conn):
            labels = {"stage": row["stage"], "code": row["code"] or "none"}
            if row["outcome"] == "failed":
                gauges.append(Gauge("datasets_retrying", row["n"], labels))
            else:
                gauges.append(Gauge("datasets_parked", row["n"], {**labels, "outcome": row["outcome"]}))
        run_id = repo.latest_run_id(conn)
        if run_id is not None:
            for row in repo.run_summary(conn, run_id):
                stage = row["stage"]
                for outcome in ("ok", "skipped", "failed"):
                    gauges.append(
                        Gauge(
                            "last_run_documents", row[f"documents_{outcome}"] or 0, {"stage": stage, "outcome": outcome}
                        )
                    )
                gauges.append(Gauge("last_run_duration_seconds", float(row["duration_s"] or 0), {"stage": stage}))
    finally:
        conn.rollback()
    return gauges


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_prometheus(gauges: Iterable[Gauge]) -> str:
    """The Prometheus text exposition format (version 0.0.4) for ``gauges``.

    Samples of one metric are grouped under a single ``# HELP`` / ``# TYPE`` header.
    """
    by_name: dict[str, list[Gauge]] = {}
    for gauge in gauges:
        by_name.setdefault(gauge.name, []).append(gauge)
    lines: list[str] = []
    for name, samples in by_name.items():
        if samples[0].help:
            lines.append(f"# HELP {name} {samples[0].help}")
        lines.append(f"# TYPE {name} gauge")
        for g in samples:
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(g.labels.items()))
            lines.append(
                f"{name}{{{labels}}} {_format_value(g.value)}" if labels else f"{name} {_format_value(g.value)}"
            )
    return "\n".join(lines) + "\n"


class StatsLike(Protocol):
    def gauge(self, stat: str, value: float, *args: Any, tags: dict[str, str] | None = None, **kwargs: Any) -> None: ...


def stats_name(gauge: Gauge) -> str:
    """The Airflow Stats name of a gauge: label values become name segments, because
    StatsD without tag support flattens everything into the name."""
    parts = [STATS_PREFIX, gauge.name, *(gauge.labels[k] for k in sorted(gauge.labels))]
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in parts)


def emit_stats(gauges: Iterable[Gauge], stats: StatsLike | None = None) -> int:
    """Send ``gauges`` through Airflow's metrics (``airflow.sdk.observability.stats.Stats``).

    :param stats: the Stats object to use (Airflow's by default).
    :return: how many gauges were sent.  Metrics never fail the calling task: errors are logged.
    """
    if stats is None:
        from airflow.sdk.observability.stats import Stats  # only inside Airflow

        stats = cast(StatsLike, Stats)
    sent = 0
    for gauge in gauges:
        try:
            stats.gauge(stats_name(gauge), gauge.value, tags=dict(gauge.labels) or None)
            sent += 1
        except Exception:  # a metrics backend problem must not fail the run
            log.warning("could not emit gauge %s", gauge.name, exc_info=True)
    return sent


def emit_pipeline_gauges(settings: Settings | None = None) -> int:
    """Collect the gauges from the refresher database and emit them as Airflow Stats
    gauges (what the summary task calls).  Returns how many were sent."""
    from iati_refresher.db.connection import connection

    settings = settings or get_settings()
    with connection() as conn:
        gauges = collect(conn, settings)
    return emit_stats(gauges)
