"""bench/report.py renders e2e results as the tables BENCHMARKS.md shows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[2] / "bench" / "report.py")
assert SPEC and SPEC.loader
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


def _stage(name: str, docs: int) -> dict:
    return {
        "stage": name,
        "batches": 1 if docs else 0,
        "documents": docs,
        "ok": docs,
        "skipped": 0,
        "failed": 0,
        "activities": docs * 10,
        "span_s": 2.5 if docs else 0.04,
        "docs_per_s": docs / 2.5,
        "activities_per_s": docs * 4.0,
    }


def _results(docs: int) -> dict:
    return {
        "blob": "azurite",
        "corpus": {
            "datasets": 3,
            "publishers": 1,
            "per_kind": {"valid": 3},
            "activities": 30,
            "bytes": 3_000_000,
            "median_bytes": 1_000_000,
            "largest_bytes": 1_500_000,
        },
        "scenarios": [
            {
                "scenario": "changed",
                "state": "success",
                "wall_s": 12.5,
                "task_bodies_s": 10.0,
                "outside_task_bodies_s": 2.5,
                "airflow_share": 0.2,
                "dag_test_idle_polls_s": 0.0,
                "airflow": {"task_instances": 17},
                "load_average": [1.0, 1.5],
                "stages": [_stage("flatten", docs), _stage("index", docs)],
                "cpu_s": {"azurite": 3.2, "stage_workers": -0.0},
                "worker_peak_rss_mb": 80.0,
                "workers_seen": 2,
                "task_process_peak_rss_mb": 300.0,
                "searchable": {"changed": 3, "searchable": 3, "median_s": 9.0, "max_s": 11.0} if docs else None,
            }
        ],
    }


def test_a_scenario_with_work_gets_a_stage_table_and_the_searchable_line() -> None:
    text = report.render(_results(3))
    assert "3 datasets from 1 publishers (3 valid); 30 activities; 3 MB of XML" in text
    assert "| flatten | 1 | 3 | 3 | 0 | 0 | 30 | 2.5 | 1.2 | 12.0 |" in text
    assert "searchable: 3 of 3 (checked in Solr), median 9.0 s, last 11.0 s" in text
    assert "stage_workers 0." in text and "-0" not in text


def test_a_scenario_without_work_gets_one_line_instead_of_a_table() -> None:
    text = report.render(_results(0))
    assert "| stage |" not in text
    assert "No stage had a document to process (each stage's tasks: flatten 0.04 s, index 0.04 s)." in text
