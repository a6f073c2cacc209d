"""The production shape: a real scheduler, DAG processor, API server and triggerer, and two
Celery workers with Celery's default pool (prefork, concurrency 2), Redis as the broker,
PostgreSQL as the metadata database, Azurite as blob storage.  Runs are triggered through
the REST API, never through ``dag.test()``.

Against the ``dag.test()`` run of the same registry (:func:`tests.e2e.world.reference_digest`)
every document must end in the same state; tasks must run on both workers; a second run
processes nothing; and a worker killed (SIGKILL, everything it started with it) while it
runs a batch leads to a retried batch on the other worker — never a green run that did
nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.local.stack import AirflowStack
from tests.e2e.world import INDEXED, ORG_A, World, assert_converged, open_world, reference_digest
from tests.support import hostile, services

pytestmark = [pytest.mark.e2e, pytest.mark.deploy]

DAG_ID = "iati_refresh"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def reference(pg_template, azurite, dagbag):
    return reference_digest(pg_template, azurite, dagbag)


@pytest.fixture(scope="module")
def world(pg_template, azurite) -> Iterator[World]:
    name = services.create_database(template=pg_template)
    try:
        with pytest.MonkeyPatch.context() as mp, open_world("celery", name, azurite, mp) as w:
            w.publish_corpus()
            yield w
    finally:
        services.drop_database(name)


@pytest.fixture(scope="module")
def stack(world: World, tmp_path_factory) -> Iterator[AirflowStack]:
    metadata = services.create_database()
    environment = {
        **world.environment(),
        "REFRESHER_REFRESH_SCHEDULE": "none",  # only the runs this test triggers
        "REFRESHER_TASK_RETRY_DELAY_S": "1",
        "REFRESHER_AIRFLOW_WORKERS": "2",
        "REFRESHER_CPU_SLOTS_PER_WORKER": "2",  # with concurrency 2 per worker; one worker process per batch
        "REFRESHER_BATCH_SIZE": "2",  # several batches per stage, so both workers get some
        "REFRESHER_HTTP_TIMEOUT_S": "30",  # the stalled download below must outlast the kill
        "REFRESHER_DOWNLOAD_TIMEOUT_S": "60",
    }
    airflow = AirflowStack(
        home=tmp_path_factory.mktemp("airflow-celery"),
        metadata_uri=services.airflow_uri(metadata, driver="postgresql+psycopg"),
        executor="CeleryExecutor",
        broker_url=services.redis_url(),
        api_port=services.free_port(),
        workers=2,
        worker_concurrency=2,
        worker_pool="prefork",
        environment=environment,
        heartbeat_timeout_s=20,
    )
    started = time.monotonic()
    try:
        airflow.start()
        TIMINGS["stack healthy"] = time.monotonic() - started
        yield airflow
    finally:
        airflow.stop()
        print("celery tier timings (s):", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
        services.drop_database(metadata)


def run(stack: AirflowStack, label: str) -> tuple[str, str, list[dict[str, Any]]]:
    started = time.monotonic()
    run_id = stack.trigger(DAG_ID)
    state = stack.wait_for_run(DAG_ID, run_id, timeout_s=600)
    TIMINGS[label] = time.monotonic() - started
    return run_id, state, stack.task_instances(DAG_ID, run_id)


def component_logs(stack: AirflowStack) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in stack.log_dir.glob("*.log"))


def test_a_run_on_two_prefork_celery_workers_ends_as_under_dag_test(stack, world, reference) -> None:
    _, state, tis = run(stack, "first run")
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert state == "success", (states, component_logs(stack))
    batches = [t for t in tis if t["map_index"] >= 0]
    assert {t["task_id"] for t in batches} >= {"download", "clean", "flatten", "lakify", "index"}
    assert all(t["state"] == "success" and t["try_number"] == 1 for t in batches), states
    assert {t["hostname"] for t in tis if t["hostname"]} == {"worker1", "worker2"}, "tasks ran on both workers"
    assert_converged(world, reference)
    assert world.slack.messages == [], "a healthy run pages nobody"


def test_the_components_bind_loopback_only(stack) -> None:
    listening = _listening_ports()
    pids = set()
    for pgid in stack.process_groups().values():
        pids |= _pids_in_group(pgid)
    ours = [(addr, port) for addr, port, inode in listening if _inode_owner(inode, pids)]
    assert ours, "the API server listens"
    assert all(addr in ("127.0.0.1", "::1") for addr, _ in ours), ours
    assert {port for _, port in ours} == {stack.api_port}, "only the API server's port; no log servers"


def test_a_second_run_processes_nothing(stack, world) -> None:
    run_id, state, tis = run(stack, "second run (nothing changed)")
    assert state == "success"
    done = world.rows("SELECT coalesce(sum(documents_in), 0) AS n FROM run_stage_telemetry WHERE run_id = %s", run_id)
    assert done[0]["n"] == 0
    assert not [t for t in tis if t["map_index"] >= 0 and t["state"] == "success"], "no batch was planned"


def test_a_worker_killed_mid_batch_leads_to_a_retried_batch_not_a_green_run_that_did_nothing(stack, world) -> None:
    world.registry.stall_s = 12  # the new dataset's download holds its batch long enough to kill its worker
    world.publish("d-late", "org-a-late", ORG_A, hostile.utf8(hostile.activity("XX-LATE-1")), route="/stall")
    world.serve(stamp=1_800_000_100)
    started = time.monotonic()
    run_id = stack.trigger(DAG_ID)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for ti in stack.task_instances(DAG_ID, run_id):
            if ti["task_id"] == "download" and ti["state"] == "running" and ti["hostname"]:
                victim = ti
        time.sleep(0.5)
    assert victim is not None, "the download batch ran"
    time.sleep(2)  # well inside the stalled download
    killed = stack.kill_worker(int(victim["hostname"].removeprefix("worker")))
    assert len(killed) >= 3, "the worker, its pool child and the task process"

    state = stack.wait_for_run(DAG_ID, run_id, timeout_s=600)
    TIMINGS["run with a worker killed mid-batch"] = time.monotonic() - started
    tis = stack.task_instances(DAG_ID, run_id)
    [download] = [t for t in tis if t["task_id"] == "download" and t["map_index"] == victim["map_index"]]
    assert state == "success", {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert download["try_number"] >= 2 and download["state"] == "success", download
    assert download["hostname"] != victim["hostname"], "retried on the surviving worker"
    late = world.doc("d-late")
    assert late["downloaded"] and late["solr_indexed_hash"] == late["hash"], "the batch's work was done, not lost"
    assert all(world.doc(d)["solr_indexed_hash"] == world.doc(d)["hash"] for d in INDEXED)
    assert not world.rows("SELECT 1 FROM document_claim WHERE expires_at > now() AT TIME ZONE 'utc'")
    assert world.slack.messages == [], "the retry succeeded: nothing failed for good, nobody is paged"


def _listening_ports() -> list[tuple[str, int, str]]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            if len(address) == 8:
                addr = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = (
                    "::1"
                    if address == "00000000000000000000000001000000"
                    else ("::" if set(address) == {"0"} else address)
                )
            found.append((addr, int(port, 16), fields[9]))
    return found


def _pids_in_group(pgid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == pgid:
                    pids.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def _inode_owner(inode: str, pids: set[int]) -> bool:
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if fd.readlink().as_posix() == f"socket:[{inode}]":
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False
