"""Injected faults, end to end through ``dag.test()``, and the rerun that converges.

Each test starts a world (:mod:`tests.e2e.world`: real PostgreSQL and Azurite, stand-ins for
the registry, the Validator, Solr and Slack), breaks one thing during a run, checks that the
damage is recorded per document (and retried by Airflow where a whole task failed), clears
the fault and reruns: the database, blob and Solr digests must then equal those of a
fault-free run of the same corpus (:func:`reference`).  Every test also checks that none of
the world's secrets reached a log, a task output, an XCom, the database or the status page.

Two smaller tests check the blob client's bounded retries and a worker pool that breaks
while the batch is recording outcomes.  The retry-discipline tests at the end drive the
pipeline functions directly (no Airflow): a persistent fault at each stage must end in a
visible ``gave_up`` after the retry cap, never in a document that is picked up on every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from iati_refresher import pipeline
from iati_refresher.db import repository as repo
from iati_refresher.db.connection import connect
from iati_refresher.sample.server import Reply
from tests.e2e.world import INDEXED, SECRETS, World, assert_converged, run_dag, succeeded
from tests.support import services

pytestmark = pytest.mark.e2e

STAGES = ("download", "validate", "clean", "flatten", "lakify", "index")


# --- the fault-free reference ---------------------------------------------------------------------


def failed_rows(world: World, stage: str) -> dict[str, dict[str, Any]]:
    rows = world.rows("SELECT * FROM document_stage WHERE stage = %s AND outcome <> 'ok'", stage)
    return {r["document_id"]: r for r in rows}


# --- no secret anywhere ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def status_app():
    """Airflow's API server app, with the status plugin mounted (as in production)."""
    from airflow.api_fastapi.app import create_app, purge_cached_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "fault-tests-" + "k" * 64)
        yield create_app("core")
    purge_cached_app()


def status_pages(app: Any, world: World) -> dict[str, str]:
    """What a logged-in operator sees on the status page and its API for every dataset."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    paths = [
        "/iati-status/",
        "/iati-status/api/datasets?limit=500",
        "/iati-status/api/summary",
        "/iati-status/metrics",
        *(f"/iati-status/api/datasets/{d}" for d in world.datasets),
        *(f"/iati-status/datasets/{d}" for d in world.datasets),
    ]
    pages = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code}"
        pages[path] = response.text
    return pages


def assert_no_leaks(
    world: World,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    pages: dict[str, str] | None = None,
) -> None:
    """No secret of the world in captured output (task processes and workers included), log
    records, Airflow's log files, XComs, the refresher database, Slack messages or the status
    pages given."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out, err = capfd.readouterr()
    sources = {"stdout": out, "stderr": err, "log records": caplog.text, **(pages or {})}
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    if logs.is_dir():
        sources["airflow log files"] = "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    with create_session() as session:
        sources["xcom"] = "\n".join(str(x.value) for x in session.query(XComModel).all())
    with psycopg.connect(world.conninfo) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        sources["database"] = "\n".join(
            str(row[0])
            for t in tables
            for row in conn.execute(f'SELECT row_to_json(t)::text FROM public."{t}" t').fetchall()
        )
    sources["slack"] = "\n".join(json.dumps(m.body) for m in world.slack.messages)
    assert out or err or caplog.text, "nothing was captured: the check would be vacuous"
    for secret in SECRETS:
        for where, text in sources.items():
            assert secret not in text, f"a secret ({secret[:6]}...) leaked into {where}"


# --- watching a run from the side ---------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls the refresher database until ``ready(conn)`` is true, then calls ``act()`` once."""

    def __init__(self, conninfo: str, ready: Callable[[psycopg.Connection], bool], act: Callable[[], None]):
        super().__init__(daemon=True, name="fault-watcher")
        self.conninfo, self.ready, self.act = conninfo, ready, act
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True, application_name="fault-watcher") as conn:
            while not self.stop.is_set():
                if self.ready(conn):
                    self.act()
                    self.done.set()
                    return
                time.sleep(0.01)

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)


def stage_started(column: str) -> Callable[[psycopg.Connection], bool]:
    """True once a batch has marked a document started (``clean_start``, ``flatten_start``...)."""
    sql = f"SELECT 1 FROM document WHERE {column} IS NOT NULL LIMIT 1"
    return lambda conn: conn.execute(sql).fetchone() is not None


def spawned_workers() -> list[int]:
    """Pids of this process's stage worker processes (:mod:`iati_refresher.worker_pool`)."""
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"iati_refresher.worker_pool" in cmdline:
            pids.append(int(entry.name))
    return pids


# --- services failing while documents are in flight -------------------------------------------


def test_validator_errors_a_stalling_publisher_and_solr_dying_mid_batch(
    world: World, dagbag, reference, capfd, caplog, status_app
) -> None:
    """Three faults in one run, each hitting different documents: the Validator answers 503
    twice and then not at all (timeout), one publisher stalls mid-body, and Solr goes down
    right after accepting the first documents of the index batch."""
    world.validator.fail_next(2, status=503)
    world.validator.delay_next(4.0)  # longer than REFRESHER_VALIDATOR_TIMEOUT_S
    world.registry.stall_s = 30.0  # far beyond REFRESHER_HTTP_TIMEOUT_S / REFRESHER_DOWNLOAD_TIMEOUT_S
    died: list[str] = []

    def die_after_the_first_add(event) -> None:
        if event.added and not died:
            died.append(event.collection)
            world.solr.down()  # in the request's own thread: its answer is never sent

    world.solr.on_update = die_after_the_first_add
    run, states, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run), states  # per-document failures are data: the run stays green below the threshold

    # the publisher that stalled: a retryable timeout, download_error 0 as in the reference
    row = world.stage("d-stall", "download")
    assert (row["outcome"], row["code"]) == ("failed", "timeout") and row["next_attempt_at"] is not None
    assert world.doc("d-stall")["download_error"] == 0 and world.doc("d-stall")["downloaded"] is None

    # the Validator: three documents failed, retryable, nothing stored for them
    failed = failed_rows(world, "validate")
    assert sorted(r["code"] for r in failed.values()) == ["http_503", "http_503", "validator_unavailable"]
    for doc_id, row in failed.items():
        assert row["outcome"] == "failed" and row["attempts"] == 1 and row["next_attempt_at"] is not None
        assert world.doc(doc_id)["validation"] is None and world.doc(doc_id)["clean_end"] is None
    assert "timeout" in next(r for r in failed.values() if r["code"] == "validator_unavailable")["message"]

    # Solr: the document whose first update killed it failed, retryable, and so did any other
    # not finished by then (a concurrent one may have finished just before); half of a
    # batch is left behind
    assert died, "Solr accepted a first update, then went down"
    at_index = [d for d in INDEXED if d not in failed and d != "d-stall"]
    assert at_index, "the documents the faults did not touch carried on to the index stage"
    index_failed = failed_rows(world, "index")
    assert index_failed and set(index_failed) <= set(at_index)
    assert {(r["outcome"], r["code"]) for r in index_failed.values()} == {("failed", "solr_connection")}
    for doc_id in at_index:
        row = world.doc(doc_id)
        if doc_id in index_failed:
            assert row["solr_indexed_hash"] is None and row["solr_api_error"], doc_id
        else:
            assert row["solr_indexed_hash"] == row["hash"], doc_id
    world.solr.on_update = None
    world.solr.up()
    assert world.solr.docs("activity"), "the rollback could not reach Solr: partial documents remain"
    assert world.digest().parts != reference.parts
    pages = status_pages(status_app, world)  # every failure above, as an operator sees it
    assert "validator_unavailable" in pages["/iati-status/api/datasets?limit=500"]
    assert_no_leaks(world, capfd, caplog, pages)

    world.registry.stall_s = 0
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- blob storage ------------------------------------------------------------------------------------


def test_blob_storage_stops_in_the_middle_of_a_run(world: World, dagbag, reference, capfd, caplog) -> None:
    with Watcher(world.conninfo, stage_started("clean_start"), world.stop_blob_storage) as watcher:
        run, states, _ = run_dag(dagbag, "iati_refresh")
    assert watcher.done.is_set()
    assert succeeded(run), states
    failed = {d: r for d, r in failed_rows(world, "clean").items() if d != "d-org"}  # d-org needs no blob
    assert failed and {r["code"] for r in failed.values()} == {"storage_error"}
    assert all(r["outcome"] == "failed" and r["next_attempt_at"] for r in failed.values())
    assert world.rows("SELECT id FROM document WHERE flatten_end IS NOT NULL OR lakify_end IS NOT NULL") == []

    world.start_blob_storage()
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


def test_a_blob_request_is_retried_a_bounded_number_of_times() -> None:
    """``blob_retry_total`` reaches the Azure client: a storage answering 503 gets one request
    plus that many retries, then the stage sees a (retryable) storage error.  The SDK's own
    default would wait about 90 s per request."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from iati_refresher.connections import ConnectionInfo
    from iati_refresher.settings import Settings
    from iati_refresher.storage import BlobStorageError, blob_config_from, open_blob_store

    hits: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/{services.AZURITE_ACCOUNT}"
        info = ConnectionInfo(
            "refresher_blob",
            extra={
                "connection_string": (
                    f"DefaultEndpointsProtocol=http;AccountName={services.AZURITE_ACCOUNT};"
                    f"AccountKey={services.AZURITE_KEY};BlobEndpoint={endpoint};"
                )
            },
        )
        store = open_blob_store(blob_config_from(info, Settings(blob_retry_total=2, blob_retry_backoff_s=0)))
        with pytest.raises(BlobStorageError):
            store.put_bytes("source", "x.xml", b"<x/>")
    finally:
        server.shutdown()
        server.server_close()
    assert len(hits) == 3


# --- the database --------------------------------------------------------------------------------------


def test_database_connections_dropped_mid_run_and_solr_down_before_the_index(
    world: World, dagbag, reference, capfd, caplog
) -> None:
    """Two faults of one run: the pipeline's database connections are terminated while the
    clean batch works (Airflow retries the task), and Solr is down before the index batch."""
    dropped: list[int] = []

    def terminate() -> None:
        with psycopg.connect(services.pg_admin(), autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'iati-refresher' AND datname = %s",
                (world.dbname,),
            ).fetchall()
        dropped.extend(1 for r in rows if r[0])

    world.solr.down()
    with Watcher(world.conninfo, stage_started("clean_start"), terminate):
        run, states, tries = run_dag(dagbag, "iati_refresh")
    assert dropped, "a pipeline connection was open and was terminated"
    assert succeeded(run), states
    retried = [t for t, n in tries.items() if t.startswith("clean[") and n > 1]
    assert retried, f"the clean batch whose connection dropped failed and was retried by Airflow: {tries}"
    assert all(states[t] == "success" for t in retried)
    assert all(world.doc(d)["lakify_end"] and world.doc(d)["flatten_end"] for d in INDEXED), "clean caught up"

    failed = failed_rows(world, "index")
    assert set(failed) == set(INDEXED)
    assert {(r["outcome"], r["code"]) for r in failed.values()} == {("failed", "solr_connection")}
    assert all(world.doc(d)["solr_api_error"] and world.doc(d)["solr_indexed_hash"] is None for d in INDEXED)

    world.solr.up()
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- a batch task that fails after its retries -------------------------------------------------------------


def test_a_batch_task_failing_after_its_retries_is_recorded_counted_and_paged_once(
    world: World, dagbag, reference, capfd, caplog
) -> None:
    """The database rejects every write of the clean stage's results (think: a disk that
    filled up), so the clean batch task fails on each of its three tries.  Its documents
    must not look untouched: each gets a failed ``batch_failed`` outcome naming the task
    and the error, the summary counts them as failed and lists the task, Slack is paged
    once with the task, the batch and the log link, and the run is red (its only clean
    batch failed).  The next run, with the fault gone, converges."""
    world.refuse_clean_results()
    run, states, tries = run_dag(dagbag, "iati_refresh")
    assert str(run.state).endswith("failed"), states
    assert states["clean[0]"].endswith("failed") and tries["clean[0]"] == 3, (states, tries)
    assert states["summary"].endswith("failed")

    cleaned = {r["document_id"]: r for r in world.rows("SELECT * FROM document_stage WHERE stage = 'clean'")}
    expected = set(INDEXED) | {"d-org"}
    assert set(cleaned) == expected
    for row in cleaned.values():
        assert (row["outcome"], row["code"], row["run_id"]) == ("failed", "batch_failed", run.run_id)
        assert "the clean[0: " in row["message"] and "No space left on device (injected)" in row["message"]
        assert row["next_attempt_at"] is not None, "retried by a later run"
    telemetry = world.rows(
        "SELECT sum(documents_failed) AS failed, sum(documents_ok) AS ok FROM run_stage_telemetry "
        "WHERE run_id = %s AND stage = 'clean'",
        run.run_id,
    )[0]
    assert (telemetry["failed"], telemetry["ok"]) == (len(expected), 0)
    with connect(world.conninfo) as conn:
        shown = {r["id"]: r for r in repo.document_status_rows(conn, keys=sorted(expected))}
    for row in shown.values():  # what the status page and `refresher status` show
        [clean] = [s for s in row["stages"] if s["stage"] == "clean"]
        assert (clean["outcome"], clean["code"]) == ("failed", "batch_failed")

    texts = [m.text for m in world.slack.messages]
    assert len(texts) == 1, texts
    assert run.run_id in texts[0] and "every clean batch failed" in texts[0]
    assert "*iati_refresh.clean[0: " in texts[0] and "failed after its retries" in texts[0]
    assert "/tasks/clean/mapped/0|View log>" in texts[0]

    world.accept_clean_results()
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert len(world.slack.messages) == 1, "a healthy run pages nobody"
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- a secrets backend that fails in the middle of a run ---------------------------------------------------


def test_a_failing_connection_lookup_fails_the_task_and_nothing_is_written_in_its_place(
    world: World, dagbag, reference, capfd, caplog, monkeypatch, tmp_path
) -> None:
    """A deployment (not embedded) whose secrets backend refuses the blob storage's lookup
    while the download stage runs.  "Not configured" must not be read into that: no local
    directory in place of Azure, no blob, no report, no Solr document.  The download task
    fails on each try with the connection named, its documents are recorded as failed, the
    run is red and pages once; with the backend back the rerun converges."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    local_dir = tmp_path / "must-stay-empty"
    monkeypatch.setenv("REFRESHER_EMBEDDED", "false")
    monkeypatch.setenv("REFRESHER_LOCAL_BLOB_DIR", str(local_dir))
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "tests.support.secrets.OutageVault")
    monkeypatch.setenv("REFRESHER_TEST_VAULT_OUTAGE", "refresher_blob@download")
    clear_secrets_backends_cache()
    try:
        run, states, tries = run_dag(dagbag, "iati_refresh")
    finally:
        monkeypatch.delenv("REFRESHER_TEST_VAULT_OUTAGE")
        monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND")
        clear_secrets_backends_cache()
    assert str(run.state).endswith("failed"), states
    assert states["preflight"].endswith("success"), "the backend answered while the preflight ran"
    downloads = [t for t in states if t.startswith("download[")]
    assert downloads and all(states[t].endswith("failed") and tries[t] == 3 for t in downloads), (states, tries)

    recorded = failed_rows(world, "download")
    assert set(recorded) == set(world.datasets)
    for row in recorded.values():
        assert (row["outcome"], row["code"]) == ("failed", "batch_failed")
        assert "looking up the connection 'refresher_blob' failed" in row["message"]
        assert "vault.example.org is sealed" in row["message"]
    assert not local_dir.exists() or not any(local_dir.rglob("*")), "nothing went to a local default"
    assert all(not list(world.blobs.list(c)) for c in world.containers.values()), "no blob anywhere"
    assert (
        world.rows("SELECT count(*) AS n FROM document WHERE downloaded IS NOT NULL OR validation IS NOT NULL")[0]["n"]
        == 0
    )
    assert world.rows("SELECT count(*) AS n FROM validation")[0]["n"] == 0, "no report"
    assert not world.validator.requests and world.solr.update_requests == 0, "no validation, no Solr document"
    texts = [m.text for m in world.slack.messages]
    assert len(texts) == 1 and "download" in texts[0], texts

    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- a worker process killed ----------------------------------------------------------------------------


def test_a_worker_process_killed_mid_stage(world: World, dagbag, reference, capfd, caplog) -> None:
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            for pid in spawned_workers()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.005)

    with Watcher(world.conninfo, stage_started("flatten_start"), kill_a_worker):
        run, states, _ = run_dag(dagbag, "iati_refresh")
    assert killed, "a flatten worker was killed"
    assert succeeded(run), states
    crashed = failed_rows(world, "flatten")
    assert crashed and {r["code"] for r in crashed.values()} == {"worker_crashed"}
    assert all(r["outcome"] == "failed" and r["next_attempt_at"] for r in crashed.values())
    assert all(world.doc(d)["flatten_end"] is None for d in crashed)

    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- the registry and publishers ------------------------------------------------------------------------


def test_a_truncated_registry_index_deletes_nothing(world: World, dagbag, reference, capfd, caplog) -> None:
    run, states, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run), states
    assert_converged(world, reference)

    # The body cut short: not JSON, so the sync is skipped and the pipeline carries on.
    world.registry.truncate_dataset_index = True
    world.serve(stamp=1_800_000_100)
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    state = world.rows("SELECT last_result FROM registry_state")[0]
    assert state["last_result"].startswith("skipped")
    assert_converged(world, reference)

    # A well-formed index listing a third of the datasets: refused, visibly, nothing deleted.
    world.registry.truncate_dataset_index = False
    world.serve(stamp=1_800_000_200, only=["d-valid", "d-mixed"])
    run3, states3, _ = run_dag(dagbag, "iati_refresh")
    assert not succeeded(run3) and states3["summary"].endswith("failed")
    assert any("refused" in m.text or "summary" in m.text for m in world.slack.messages), "on-call was paged"
    assert_converged(world, reference)
    assert_no_leaks(world, capfd, caplog)


# --- retry discipline ----------------------------------------------------------------------------------


def run_stage(stage: str, run_id: str = "scheduled__retry-test") -> list[dict[str, Any]]:
    """What one DAG run does for ``stage``: plan the batches, run each."""
    return [pipeline.run_batch(b, run_id=run_id, dag_id="iati_refresh") for b in pipeline.plan_batches(stage)]


def planned(stage: str) -> set[str]:
    return {doc_id for batch in pipeline.plan_batches(stage) for doc_id in batch["ids"]}


@contextlib.contextmanager
def persistent_fault(world: World, stage: str) -> Iterator[str]:
    """Break what ``stage`` needs until the block ends; yields the code the failures get."""
    path = "/files/d-valid.xml"
    if stage == "download":
        saved = world.registry.files[path]
        world.registry.files[path] = Reply.text(503, "busy")
        yield "http_503"
        world.registry.files[path] = saved
    elif stage == "validate":
        world.validator.fail_next(2, status=503)  # exactly the two attempts
        yield "http_503"
    elif stage == "index":
        world.solr.down()
        yield "solr_connection"
        world.solr.up()
    else:  # clean, flatten and lakify read and write blobs
        world.stop_blob_storage()
        yield "storage_error"
        world.start_blob_storage()


@pytest.fixture
def one_document(world: World, monkeypatch) -> World:
    """Only d-valid in the registry, synced; one worker and a cap of two attempts."""
    monkeypatch.setenv("REFRESHER_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("REFRESHER_PROCESS_POOL_SIZE", "1")
    world.serve(only=["d-valid"])
    pipeline.sync_registry("scheduled__setup")
    return world


@pytest.mark.parametrize("stage", STAGES)
def test_a_persistent_fault_parks_the_document_visibly_until_an_operator_reruns_it(
    one_document: World, stage: str
) -> None:
    world = one_document
    for earlier in STAGES[: STAGES.index(stage)]:
        run_stage(earlier)
    with persistent_fault(world, stage) as code:
        for attempt in (1, 2):
            assert planned(stage) == {"d-valid"}, f"attempt {attempt} is due"
            run_stage(stage)
            row = world.stage("d-valid", stage)
            assert (row["code"], row["attempts"]) == (code, attempt)
            assert row["outcome"] == ("gave_up" if attempt == 2 else "failed")
        assert planned(stage) == set(), "after the cap the document is not picked up again"
        with connect(world.conninfo) as conn:
            status = repo.document_status_rows(conn, keys=["d-valid"])[0]
        assert (status["state"], status["parked_stage"]) == ("parked", stage)
        assert any(s["outcome"] == "gave_up" and s["code"] == code for s in status["stages"])
        summary = pipeline.summarise_run("scheduled__retry-test", None)
        assert {"stage": stage, "outcome": "gave_up", "code": code, "n": 1} in summary["parked"]
    assert planned(stage) == set(), "the fault is gone, but a parked document waits for an operator"
    assert pipeline.reset_for_reprocess(["d-valid"], stage, force_redownload=False) == 1
    assert planned(stage) == {"d-valid"}
    run_stage(stage)
    assert world.stage("d-valid", stage)["outcome"] == "ok"


def test_a_reset_request_from_another_service_is_honoured_once_not_on_every_run(one_document: World) -> None:
    """validator-services sets ``regenerate_validation_report``, datastore-services sets
    ``solrize_reindex``: a request that then fails for good parks the document like any
    other failure instead of bringing it back on every run."""
    world = one_document
    for stage in STAGES:
        run_stage(stage)
    assert world.doc("d-valid")["solrize_end"] is not None
    world.rows("UPDATE document SET regenerate_validation_report = true, solrize_reindex = true RETURNING id")

    # a retryable failure still waits and counts its attempts up to the cap ...
    world.validator.fail_next(2, status=503)
    for _ in range(2):
        assert planned("validate") == {"d-valid"}
        run_stage("validate")
    assert world.stage("d-valid", "validate")["outcome"] == "gave_up"
    assert planned("validate") == set(), "the regenerate request was answered: gave up"
    # ... and a request that cannot succeed (the Validator refuses the file) is asked once
    world.rows("UPDATE document SET regenerate_validation_report = true RETURNING id")
    world.validator.fail_next(5, status=413, body={"error": "Max Filesize of 60 MiB exceeded"})
    run_stage("validate")
    assert (world.stage("d-valid", "validate")["outcome"], world.stage("d-valid", "validate")["code"]) == (
        "skipped",
        "too_large",
    )
    assert planned("validate") == set()
    posts = len(world.validator.requests)
    for _ in range(2):
        run_stage("validate")
    assert len(world.validator.requests) == posts, "never posted again"

    world.solr.fail_next(20, status=400, updates_only=True)  # Solr rejects the documents
    run_stage("index")
    assert world.stage("d-valid", "index")["outcome"] == "gave_up"
    assert planned("index") == set(), "the reindex request was answered: gave up"
    with connect(world.conninfo) as conn:
        assert repo.document_status_rows(conn, keys=["d-valid"])[0]["state"] == "parked"


# --- a worker dying while the batch records outcomes ---------------------------------------------------


def die_on_killer(doc: dict[str, Any], settings: Any) -> dict[str, Any]:
    """A stage worker (runs in a spawned process): the document ``killer`` kills its process."""
    from iati_refresher.outcomes import Outcome

    if doc["id"] == "killer":
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return Outcome.ok(doc["id"]).to_dict()


def test_a_worker_dying_while_outcomes_are_recorded_fails_only_its_documents() -> None:
    """The batch records each outcome as it comes (slow database writes); a worker that dies
    meanwhile breaks the pool before the next document is handed out.  Every document still
    gets exactly one outcome, and nothing raises."""
    from iati_refresher import workers
    from iati_refresher.settings import Settings

    docs = [{"id": name} for name in ("ok-1", "killer", "ok-2", "ok-3", "ok-4", "ok-5", "ok-6")]
    outcomes: dict[str, dict[str, Any]] = {}
    for doc, outcome in workers.run_pool(die_on_killer, docs, Settings(), kind="process", size=2, resolved={}):
        assert doc["id"] not in outcomes
        outcomes[doc["id"]] = outcome
        if len(outcomes) == 1:
            time.sleep(2)  # recording the first outcome takes long; the killer dies meanwhile
    assert set(outcomes) == {d["id"] for d in docs}
    assert outcomes["killer"]["code"] == "worker_crashed" and outcomes["killer"]["retryable"]
    assert {o["code"] for o in outcomes.values() if o["status"] != "ok"} == {"worker_crashed"}


@pytest.mark.parametrize("stage", ["validate", "clean"])
def test_a_source_file_lost_from_storage_is_downloaded_again_and_the_stage_resumes(
    one_document: World, stage: str
) -> None:
    """The reference downloads a vanished source file again; the stage that noticed must
    then run again rather than stay parked."""
    world = one_document
    for earlier in STAGES[: STAGES.index(stage)]:
        run_stage(earlier)
    world.blobs.delete(world.containers["source"], [world.doc("d-valid")["hash"] + ".xml"])
    run_stage(stage)
    row = world.stage("d-valid", stage)
    assert (row["outcome"], row["code"]) == ("failed", "source_missing")
    assert world.doc("d-valid")["downloaded"] is None, "marked for download again"
    run_stage("download")
    assert planned(stage) == {"d-valid"}, "the stage resumes once the file is back"
    for later in STAGES[STAGES.index(stage) :]:
        run_stage(later)
    assert world.doc("d-valid")["solr_indexed_hash"] == world.doc("d-valid")["hash"]
