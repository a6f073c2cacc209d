"""Markdown tables from ``bench/e2e.py`` results, for BENCHMARKS.md.

Usage::

    python bench/report.py bench/out/e2e-1000/results.json [more results.json ...]

Prints, per results file, the corpus and one table per scenario (time per stage,
documents/s, activities/s), then the CPU seconds of every process and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STAGE_COLUMNS = ("stage", "batches", "docs", "ok", "skipped", "failed", "activities", "stage s", "docs/s", "act/s")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: tuple[str, ...] | list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(list(header)), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def corpus_line(results: dict[str, Any]) -> str:
    c = results["corpus"]
    kinds = ", ".join(f"{n} {k}" for k, n in c["per_kind"].items())
    return (
        f"{c['datasets']:,} datasets from {c['publishers']:,} publishers ({kinds}); "
        f"{c['activities']:,} activities; {c['bytes'] / 1e6:,.0f} MB of XML; median file "
        f"{c['median_bytes'] / 1e3:,.0f} kB, largest {c['largest_bytes'] / 1e6:,.1f} MB; blob storage: "
        f"{results.get('blob', '?')}"
    )


def scenario_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"**{s['scenario']}** — {s['state']}, wall **{s['wall_s']:,} s**; stage code (task bodies) "
        f"{s['task_bodies_s']:,} s; outside task bodies {s['outside_task_bodies_s']:,} s "
        f"({s['airflow_share']:.0%}; of which `dag.test()` idle polls {s['dag_test_idle_polls_s']} s); "
        f"{s['airflow']['task_instances']} task instances; load average {s['load_average'][0]} → "
        f"{s['load_average'][1]}.",
        "",
    ]
    rows = [
        [
            st["stage"],
            st["batches"],
            st["documents"],
            st["ok"],
            st["skipped"],
            st["failed"],
            f"{st['activities']:,}",
            st["span_s"],
            st["docs_per_s"],
            st["activities_per_s"],
        ]
        for st in s["stages"]
    ]
    if any(st["documents"] for st in s["stages"]):
        lines += _table(STAGE_COLUMNS, rows)
    else:
        spans = ", ".join(f"{st['stage']} {st['span_s']} s" for st in s["stages"])
        lines.append(f"No stage had a document to process (each stage's tasks: {spans}).")
    # max(): a process's CPU clock sampled twice can differ by a tick in the wrong direction.
    cpu = ", ".join(f"{k} {max(0.0, v):,.0f}" for k, v in s["cpu_s"].items())
    lines += [
        "",
        f"CPU seconds: {cpu}. Peak RSS: stage worker processes {s['worker_peak_rss_mb']} MB "
        f"({s['workers_seen']} processes), the task process (Airflow's `dag.test()` runner) "
        f"{s['task_process_peak_rss_mb']} MB.",
    ]
    if s.get("searchable"):
        w = s["searchable"]
        lines.append(
            f"Changed datasets searchable: {w['searchable']} of {w['changed']} (checked in Solr), "
            f"median {w['median_s']} s, last {w['max_s']} s after the run started."
        )
    return lines


def render(results: dict[str, Any]) -> str:
    lines = [corpus_line(results), ""]
    for s in results["scenarios"]:
        lines += [*scenario_lines(s), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.results:
        print(render(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
