"""Concurrency: overlapping runs, leases that outlive a batch or its process, lost updates.

Runs here are real processes (``python -c`` calling :mod:`iati_refresher.pipeline`, as an
Airflow task process would) or threads of the test, against the same world as the fault
suite (:mod:`tests.e2e.world`).  What must hold:

* two runs over the same documents (the scheduled run and an operator's re-run) never work
  on one document at the same time, and together end exactly where one run ends;
* a batch that takes longer than the claim lease keeps its documents (the lease is renewed);
* the claims of a killed task process expire, and the next run finishes its documents;
* a result computed for an old version never lands on a document that changed meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from iati_refresher import pipeline
from iati_refresher.db import repository as repo
from iati_refresher.db.connection import connect
from tests.e2e.world import ORG_A, World, assert_converged
from tests.support import hostile

pytestmark = pytest.mark.e2e

STAGES = pipeline.STAGES
DAG_ID = "iati_refresh"


def run_stage(stage: str, run_id: str) -> list[dict[str, Any]]:
    return [pipeline.run_batch(b, run_id=run_id, dag_id=DAG_ID) for b in pipeline.plan_batches(stage)]


def python(code: str, *args: str) -> subprocess.Popen[bytes]:
    """A separate process running ``code`` with this test's environment (like a task process)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=dict(os.environ))


SCHEDULED_RUN = """
import sys
from iati_refresher import pipeline
for stage in pipeline.STAGES:
    for batch in pipeline.plan_batches(stage):
        pipeline.run_batch(batch, run_id=sys.argv[1], dag_id="iati_refresh")
"""

OPERATOR_RERUN = """
import sys
from iati_refresher import pipeline
pipeline.process_selection(sys.argv[2].split(","), run_id=sys.argv[1], dag_id="iati_reprocess")
"""

ONE_BATCH = """
import json, sys
from iati_refresher import pipeline
pipeline.run_batch(json.loads(sys.argv[2]), run_id=sys.argv[1], dag_id="iati_refresh")
"""


def claims_of(world: World, owner_prefix: str) -> list[dict[str, Any]]:
    return world.rows(
        "SELECT document_id, owner, expires_at > (now() AT TIME ZONE 'UTC') AS live FROM document_claim "
        "WHERE owner LIKE %s ORDER BY document_id",
        owner_prefix + "%",
    )


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# --- two runs at once ----------------------------------------------------------------------------


def test_the_scheduled_run_and_an_operator_rerun_overlap_safely(world: World, reference, monkeypatch) -> None:
    """Both start together on the same six documents, in batches of three, and the Validator
    is slow at first, so their batches interleave.  Each document goes through each stage
    exactly once, and together they end exactly where one fault-free run ends."""
    monkeypatch.setenv("REFRESHER_VALIDATOR_TIMEOUT_S", "20")
    monkeypatch.setenv("REFRESHER_BATCH_SIZE", "3")
    pipeline.sync_registry("scheduled__sync")
    ids = sorted(world.datasets)
    world.validator.delay_next(1.5, count=2)
    runs = [python(SCHEDULED_RUN, "scheduled__a"), python(OPERATOR_RERUN, "manual__b", ",".join(ids))]
    assert [p.wait(180) for p in runs] == [0, 0]

    telemetry = world.rows(
        "SELECT stage, run_id, sum(documents_in) AS n FROM run_stage_telemetry GROUP BY stage, run_id"
    )
    per_stage = {s: sum(int(r["n"]) for r in telemetry if r["stage"] == s) for s in STAGES}
    recorded = {s: len(world.rows("SELECT 1 FROM document_stage WHERE stage = %s", s)) for s in STAGES}
    assert per_stage == recorded, "no document was processed by both runs in any stage"
    assert {r["run_id"] for r in telemetry if int(r["n"])} == {"scheduled__a", "manual__b"}, "both did work"
    spans = world.rows(
        "SELECT run_id, min(started_at) AS s, max(finished_at) AS f FROM run_stage_telemetry GROUP BY run_id"
    )
    assert max(r["s"] for r in spans) < min(r["f"] for r in spans), "at the same time"
    assert world.rows("SELECT * FROM document_stage WHERE attempts <> 1") == []
    validated = len(world.rows("SELECT 1 FROM document WHERE validation IS NOT NULL"))
    assert len(world.validator.requests) == 2 * validated, "each file checked and validated once"
    assert_converged(world, reference)


def test_concurrent_claims_never_hand_one_document_to_two_owners(world: World) -> None:
    pipeline.sync_registry("scheduled__sync")
    ids = sorted(world.datasets)
    start = threading.Barrier(8)
    won: dict[str, list[str]] = {}

    def contend(owner: str) -> None:
        with connect(world.conninfo) as conn:
            start.wait()
            won[owner] = repo.claim(conn, ids, "download", owner, 60)
            conn.commit()

    threads = [threading.Thread(target=contend, args=(f"run-{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [doc_id for owned in won.values() for doc_id in owned]
    assert sorted(claimed) == ids, f"every document exactly once: {won}"


# --- leases ------------------------------------------------------------------------------------------


def test_a_batch_that_outlives_its_lease_keeps_its_claims(world: World, monkeypatch) -> None:
    """The lease is 2 s; one validation takes 4 s.  Another run trying to claim the documents
    all along must never get one while the batch is still working on it."""
    monkeypatch.setenv("REFRESHER_CLAIM_TTL_S", "2")
    monkeypatch.setenv("REFRESHER_VALIDATOR_TIMEOUT_S", "20")
    world.serve(only=["d-valid", "d-es"])
    pipeline.sync_registry("scheduled__sync")
    run_stage("download", "scheduled__sync")
    batch = pipeline.plan_batches("validate")[0]
    world.validator.delay_next(4.0)

    stolen: list[str] = []
    worker = threading.Thread(
        target=pipeline.run_batch, args=(batch,), kwargs={"run_id": "scheduled__slow", "dag_id": DAG_ID}
    )
    worker.start()
    wait_for(lambda: len(claims_of(world, "scheduled__slow")) == len(batch["ids"]), "the batch to claim")
    with connect(world.conninfo) as conn:
        while worker.is_alive():
            taken = repo.claim(conn, batch["ids"], "validate", "manual__intruder", 60)
            # A document whose outcome is recorded is finished: taking it then is fine.
            unfinished = [
                r["id"]
                for r in conn.execute(
                    """SELECT d.id FROM document d WHERE d.id = ANY(%s) AND NOT EXISTS (
                       SELECT 1 FROM document_stage s WHERE s.document_id = d.id AND s.stage = 'validate')""",
                    (taken,),
                ).fetchall()
            ]
            repo.release(conn, taken, "manual__intruder")
            conn.commit()
            stolen += unfinished
            time.sleep(0.05)
    worker.join()
    assert stolen == [], "the running batch renewed its lease"
    assert {r["outcome"] for r in world.rows("SELECT outcome FROM document_stage WHERE stage = 'validate'")} == {"ok"}
    assert claims_of(world, "scheduled__slow") == [], "released at the end"


def test_the_claims_of_a_killed_task_process_expire(world: World, monkeypatch) -> None:
    monkeypatch.setenv("REFRESHER_CLAIM_TTL_S", "3")
    monkeypatch.setenv("REFRESHER_VALIDATOR_TIMEOUT_S", "60")
    world.serve(only=["d-valid", "d-es"])
    pipeline.sync_registry("scheduled__sync")
    run_stage("download", "scheduled__sync")
    batch = pipeline.plan_batches("validate")[0]
    world.validator.delay_next(60.0)  # the task is stuck in a request when it is killed

    task = python(ONE_BATCH, "scheduled__killed", json.dumps(batch))
    wait_for(lambda: len(world.validator.requests) >= 1, "the task to reach the Validator")
    task.kill()
    task.wait(30)
    held = claims_of(world, "scheduled__killed")
    assert [c["document_id"] for c in held] == sorted(batch["ids"]) and all(c["live"] for c in held)

    meanwhile = pipeline.run_batch(batch, run_id="scheduled__next", dag_id=DAG_ID)
    assert meanwhile["documents_in"] == 0, "documents under a live claim are left alone"

    wait_for(lambda: not any(c["live"] for c in claims_of(world, "scheduled__killed")), "the lease to run out")
    later = pipeline.run_batch(pipeline.plan_batches("validate")[0], run_id="scheduled__later", dag_id=DAG_ID)
    assert later["documents_in"] == len(batch["ids"]) and later["documents_ok"] == len(batch["ids"])
    assert all(world.doc(d)["validation"] is not None for d in ("d-valid", "d-es"))
    assert world.rows("SELECT * FROM document_claim") == []


# --- no lost update ---------------------------------------------------------------------------------------


def test_a_new_version_arriving_mid_stage_is_not_overwritten_by_the_old_result(world: World, monkeypatch) -> None:
    monkeypatch.setenv("REFRESHER_VALIDATOR_TIMEOUT_S", "20")
    world.serve(only=["d-valid"])
    pipeline.sync_registry("scheduled__sync")
    run_stage("download", "scheduled__sync")
    old_hash = world.doc("d-valid")["hash"]
    world.validator.delay_next(2.0)
    worker = threading.Thread(target=run_stage, args=("validate", "scheduled__old"))
    worker.start()
    wait_for(lambda: len(world.validator.requests) >= 1, "the old version's validation to start")

    world.publish("d-valid", "org-a-valid", ORG_A, hostile.utf8(hostile.activity("XX-HOSTILE-V2")))
    world.serve(stamp=1_800_000_500, only=["d-valid"])
    assert pipeline.sync_registry("scheduled__sync2")["updated"] == 1
    worker.join()

    doc = world.doc("d-valid")
    assert doc["hash"] != old_hash
    assert (doc["downloaded"], doc["validation"], doc["file_schema_valid"]) == (None, None, None)
    assert world.rows("SELECT 1 FROM validation WHERE document_hash = %s", old_hash) == []
    assert world.rows("SELECT * FROM document_stage WHERE document_id = 'd-valid'") == []
    for stage in STAGES:
        run_stage(stage, "scheduled__new")
    assert world.doc("d-valid")["solr_indexed_hash"] == world.doc("d-valid")["hash"]
    hashes = {d["iati_activities_document_hash"] for d in world.solr.docs("activity")}
    assert hashes == {world.doc("d-valid")["hash"]}
