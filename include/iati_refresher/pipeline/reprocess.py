"""Operator re-runs (iati_reprocess): select datasets, preview and reset their stages, run them again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iati_refresher.db import repository as repo
from iati_refresher.pipeline.batches import run_batch, unavailable_reason
from iati_refresher.pipeline.common import database
from iati_refresher.settings import Settings, get_settings
from iati_refresher.stage_specs import STAGES, first_stage


def select_for_reprocess(
    datasets: Sequence[str], publishers: Sequence[str], settings: Settings | None = None
) -> list[dict[str, Any]]:
    if not datasets and not publishers:
        raise ValueError("give at least one dataset (id or name) or publisher (org id or name)")
    with database(settings) as conn:
        rows = repo.find_documents(conn, ids_or_names=list(datasets), publishers=list(publishers))
        conn.rollback()
    return [{"id": r["id"], "name": r["name"], "publisher": r["publisher_name"], "hash": r["hash"]} for r in rows]


def reset_for_reprocess(
    ids: Sequence[str], from_stage: str, *, force_redownload: bool, settings: Settings | None = None
) -> int:
    stage = first_stage(from_stage, force_redownload=force_redownload)
    with database(settings) as conn:
        n = repo.reset_documents(conn, ids, stage)
        conn.commit()
    return n


def process_selection(
    ids: Sequence[str], *, run_id: str, dag_id: str, settings: Settings | None = None, stages: Sequence[str] = STAGES
) -> list[dict[str, Any]]:
    """Run the given documents through the stages, in order (same stage code as the main DAG)."""
    settings = settings or get_settings()
    results = []
    for stage in stages:
        if unavailable_reason(stage, settings):
            continue
        with database(settings) as conn:
            ready = [
                d["id"]
                for d in repo.ready_documents(
                    conn, stage, ids=list(ids), safety_period_s=settings.safety_check_period_s
                )
            ]
            conn.rollback()
        for start in range(0, len(ready), settings.batch_size):
            batch = {
                "stage": stage,
                "ids": ready[start : start + settings.batch_size],
                "label": "reprocess",
                "key": f"reprocess-{start // settings.batch_size:04d}",
            }
            results.append(run_batch(batch, run_id=run_id, dag_id=dag_id, settings=settings))
    return results


def reprocess_preview(
    ids: Sequence[str], from_stage: str, *, force_redownload: bool, settings: Settings | None = None
) -> list[dict[str, Any]]:
    stage = first_stage(from_stage, force_redownload=force_redownload)
    with database(settings) as conn:
        rows = repo.reset_preview(conn, ids, stage)
        conn.rollback()
    return rows
