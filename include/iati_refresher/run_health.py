"""What went wrong in a run beyond per-document data, read from Airflow's own record of it.

The summary task hands in the batches each ``plan_<stage>`` task cut (its XCom; ``None``
when the plan task did not succeed) and the state of every task instance of the run
(``RuntimeTaskInstance.get_task_states``: ``task_id`` for a plain task, ``task_id_<i>``
for map index ``i``).  From them :func:`assess` tells which batch tasks failed after their
retries or never ran, which stages could not run at all, and which other tasks failed.
No I/O here: the caller records and pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Tasks of iati_refresh whose failure means the run did not do its job.
CRITICAL_TASKS = ("preflight", "migrate_database", "sync_registry", "safety_check")
_DONE = {"success", "skipped"}


@dataclass(frozen=True)
class FailedBatch:
    """One mapped batch task that did not succeed."""

    stage: str
    map_index: int
    label: str
    key: str
    ids: tuple[str, ...]
    state: str  # "failed" (after its retries), "upstream_failed" or "did not run"

    @property
    def task(self) -> str:
        return f"{self.stage}[{self.map_index}: {self.label}]"

    def describe(self) -> str:
        if self.state == "failed":
            return f"{self.task} failed after its retries ({len(self.ids)} documents)"
        return f"{self.task} did not run ({self.state}; {len(self.ids)} documents)"


@dataclass
class RunHealth:
    failed_batches: list[FailedBatch] = field(default_factory=list)
    stage_problems: list[str] = field(default_factory=list)  # a stage that could not run: the run is red
    task_problems: list[str] = field(default_factory=list)  # another task failed: the run is red

    @property
    def red(self) -> bool:
        return bool(self.stage_problems or self.task_problems)

    @property
    def worth_a_page(self) -> bool:
        return bool(self.failed_batches or self.red)


def _state(states: Mapping[str, Any], key: str) -> str | None:
    value = states.get(key)
    return None if value is None else str(value).rsplit(".", 1)[-1].lower()


def assess(
    stages: Sequence[str],
    plans: Mapping[str, Sequence[Mapping[str, Any]] | None],
    states: Mapping[str, Any],
    *,
    critical_tasks: Sequence[str] = CRITICAL_TASKS,
) -> RunHealth:
    health = RunHealth()
    for task_id in critical_tasks:
        state = _state(states, task_id)
        if state == "failed":
            health.task_problems.append(f"{task_id} failed after its retries")
        elif state == "upstream_failed":
            health.task_problems.append(f"{task_id} did not run (an upstream task failed)")
    for stage in stages:
        plan_state = _state(states, f"plan_{stage}")
        plan = plans.get(stage)
        if plan_state == "skipped":
            continue
        if plan is None or plan_state != "success":
            health.stage_problems.append(f"plan_{stage} {plan_state or 'did not run'}: the {stage} stage could not run")
            continue
        failed = []
        for index, batch in enumerate(plan):
            state = _state(states, f"{stage}_{index}")
            if state in _DONE:
                continue
            failed.append(
                FailedBatch(
                    stage=stage,
                    map_index=index,
                    label=str(batch.get("label") or ""),
                    key=str(batch.get("key") or ""),
                    ids=tuple(batch.get("ids") or ()),
                    state=state if state in ("failed", "upstream_failed") else "did not run",
                )
            )
        health.failed_batches += failed
        if plan and len(failed) == len(plan):
            health.stage_problems.append(f"every {stage} batch failed ({len(failed)} of {len(plan)})")
    return health
