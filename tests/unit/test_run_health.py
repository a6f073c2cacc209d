"""The run verdict from Airflow's record: failed and never-run batch tasks, stages that could
not run, other tasks that failed.  States are given as ``get_task_states`` returns them."""

from __future__ import annotations

from iati_refresher.run_health import assess

STAGES = ("download", "clean")


def batch(key: str, *ids: str) -> dict:
    return {"stage": "?", "key": key, "label": f"{ids[0]} +{len(ids) - 1}", "ids": list(ids)}


def healthy_states(**overrides: str | None) -> dict[str, str | None]:
    states: dict[str, str | None] = {
        "preflight": "success",
        "migrate_database": "success",
        "sync_registry": "success",
        "safety_check": "success",
        "plan_download": "success",
        "download_0": "success",
        "download_1": "success",
        "plan_clean": "success",
        "clean": "skipped",
    }
    states.update(overrides)
    return states


PLANS = {"download": [batch("0000", "a", "b"), batch("0001", "c")], "clean": []}


def test_a_healthy_run() -> None:
    health = assess(STAGES, PLANS, healthy_states())
    assert (health.failed_batches, health.stage_problems, health.task_problems) == ([], [], [])
    assert not health.red and not health.worth_a_page


def test_one_failed_batch_of_two_pages_but_does_not_fail_the_run() -> None:
    health = assess(STAGES, PLANS, healthy_states(download_1="failed"))
    [failed] = health.failed_batches
    assert (failed.stage, failed.map_index, failed.key, failed.ids, failed.state) == (
        "download",
        1,
        "0001",
        ("c",),
        "failed",
    )
    assert failed.task == "download[1: c +0]"
    assert health.worth_a_page and not health.red


def test_every_batch_of_a_stage_failed_fails_the_run() -> None:
    health = assess(STAGES, PLANS, healthy_states(download_0="failed", download_1="upstream_failed"))
    assert [b.state for b in health.failed_batches] == ["failed", "upstream_failed"]
    assert health.stage_problems == ["every download batch failed (2 of 2)"]
    assert health.red


def test_a_batch_that_never_got_a_state_did_not_run() -> None:
    health = assess(STAGES, PLANS, healthy_states(download_1=None))
    assert [b.state for b in health.failed_batches] == ["did not run"]


def test_a_plan_that_failed_means_the_stage_could_not_run() -> None:
    health = assess(
        STAGES,
        {"download": PLANS["download"], "clean": None},
        healthy_states(plan_clean="failed", clean="upstream_failed"),
    )
    assert health.stage_problems == ["plan_clean failed: the clean stage could not run"]
    assert health.red


def test_a_critical_task_that_failed_fails_the_run() -> None:
    health = assess(STAGES, PLANS, healthy_states(sync_registry="failed", safety_check="upstream_failed"))
    assert health.task_problems == [
        "sync_registry failed after its retries",
        "safety_check did not run (an upstream task failed)",
    ]
    assert health.red


def test_states_as_enum_names_are_understood() -> None:
    health = assess(STAGES, PLANS, healthy_states(download_0="TaskInstanceState.FAILED"))
    assert [b.map_index for b in health.failed_batches] == [0]
