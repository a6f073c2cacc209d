"""DAG policy: every DAG file parses, is accounted for, and follows the house rules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {
    "iati_refresh",
    "iati_reprocess",
    "iati_unflag_publisher",
    "iati_adhoc_validate",
    "iati_reconcile",
}
APPROVED_TAGS = {"iati", "refresher", "operations", "maintenance", "validation"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


def test_expected_dag_ids(dagbag) -> None:
    assert set(dagbag.dag_ids) == EXPECTED


def test_one_dag_per_file_named_after_it(dagbag) -> None:
    files = {p.stem for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert files == set(dagbag.dag_ids)
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_house_rules(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and "## What healthy looks like" in dag.doc_md, "doc_md must be a runbook"
    assert dag.tags and set(dag.tags) <= APPROVED_TAGS
    assert dag.default_args.get("retries", 0) >= 2
    assert dag.default_args.get("owner")
    assert dag.on_failure_callback, "every DAG pages through the alerts module on failure"
    assert not dag.catchup


def test_refresh_maps_per_document_work_over_named_batches(dagbag) -> None:
    dag = dagbag.dags["iati_refresh"]
    assert dag.max_active_runs == 1
    for stage, pool in {
        "download": "iati_publishers",
        "validate": "iati_validator",
        "clean": "refresher_cpu",
        "flatten": "refresher_cpu",
        "lakify": "refresher_cpu",
        "index": "solr",
    }.items():
        task = dag.task_dict[stage]
        assert task.pool == pool
        assert task.map_index_template
        assert task.on_failure_callback in (None, [])  # per-dataset failures never page
    order = [
        "preflight",
        "migrate_database",
        "sync_registry",
        "plan_download",
        "download",
        "safety_check",
        "plan_validate",
        "validate",
        "plan_clean",
        "clean",
        "plan_flatten",
        "flatten",
        "plan_lakify",
        "lakify",
        "plan_index",
        "index",
        "summary",
    ]
    for before, after in itertools.pairwise(order):
        assert after in dag.task_dict[before].get_flat_relative_ids(upstream=False), f"{before} must run before {after}"


def test_a_hung_refresh_run_times_out_and_batches_have_a_deadline(dagbag) -> None:
    """max_active_runs=1: a run that never ends would block every later one, silently."""
    from iati_refresher.settings import Settings

    dag = dagbag.dags["iati_refresh"]
    assert dag.dagrun_timeout is not None
    assert dag.dagrun_timeout.total_seconds() == Settings().run_timeout_s
    for stage in ("download", "validate", "clean", "flatten", "lakify", "index"):
        assert dag.task_dict[stage].execution_timeout.total_seconds() == Settings().batch_timeout_s
    summary = dag.task_dict["summary"]
    plans = {f"plan_{s}" for s in ("download", "validate", "clean", "flatten", "lakify", "index")}
    assert plans <= summary.upstream_task_ids, "the summary reads every plan, to find batches that never ran"


def test_the_reprocess_form_requires_only_what_it_needs(dagbag) -> None:
    """Datasets *or* publishers: each may be left empty in the trigger form."""
    params = dagbag.dags["iati_reprocess"].params
    for name in ("datasets", "publishers"):
        schema = params.get_param(name).schema
        assert "null" in schema["type"], f"{name} must be optional"
    for name in ("from_stage", "force_redownload", "dry_run"):
        assert params[name] is not None, f"{name} has a default"
    params.validate()  # the defaults form a valid trigger
