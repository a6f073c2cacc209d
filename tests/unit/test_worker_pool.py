"""The worker-process pool of the CPU-bound stages: legal in a daemonic process (Celery's
prefork children) and in threads, one outcome per document whatever happens to a worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from iati_refresher.worker_pool import PoolLimits, run_documents


def _ok(doc: dict[str, Any], settings: Any) -> dict[str, Any]:
    print("a library printing to stdout must not break the protocol")
    return {
        "document_id": doc["id"],
        "status": "ok",
        "code": None,
        "message": None,
        "retryable": False,
        "data": {"pid": os.getpid(), "setting": settings},
    }


def _misbehave(doc: dict[str, Any], settings: Any) -> dict[str, Any]:
    if doc["id"] == "killer":
        os.kill(os.getpid(), signal.SIGKILL)
    if doc["id"] == "sleeper":
        time.sleep(60)
    if doc["id"] == "hog":
        globals()["_ballast"] = bytearray(80 * 1024 * 1024)
        globals()["_ballast"][::4096] = b"x" * len(range(0, 80 * 1024 * 1024, 4096))
    return _ok(doc, settings)


def _outcomes(fn, ids, *, size=2, limits=None) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for doc, outcome in run_documents(fn, [{"id": i} for i in ids], "S", size=size, connections={}, limits=limits):
        assert doc["id"] not in seen, "one outcome per document"
        seen[doc["id"]] = outcome
    return seen


def test_documents_run_in_worker_processes_and_each_gets_one_outcome() -> None:
    outcomes = _outcomes(_ok, [f"d{i}" for i in range(6)])
    assert set(outcomes) == {f"d{i}" for i in range(6)}
    assert all(o["status"] == "ok" and o["data"]["setting"] == "S" for o in outcomes.values())
    pids = {o["data"]["pid"] for o in outcomes.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_killed_worker_costs_only_its_document() -> None:
    outcomes = _outcomes(_misbehave, ["a", "killer", "b", "c", "d"])
    assert outcomes["killer"]["status"] == "failed"
    assert outcomes["killer"]["code"] == "worker_crashed" and outcomes["killer"]["retryable"]
    assert "SIGKILL" in outcomes["killer"]["message"]
    assert {k for k, o in outcomes.items() if o["status"] == "ok"} == {"a", "b", "c", "d"}


def test_a_document_over_its_deadline_stops_its_worker_only() -> None:
    started = time.monotonic()
    outcomes = _outcomes(_misbehave, ["sleeper", "a", "b"], limits=PoolLimits(document_timeout_s=2))
    assert time.monotonic() - started < 30
    assert (outcomes["sleeper"]["code"], outcomes["sleeper"]["retryable"]) == ("worker_timeout", True)
    assert outcomes["a"]["status"] == outcomes["b"]["status"] == "ok"


def test_a_worker_that_grew_too_big_is_replaced() -> None:
    outcomes = _outcomes(_misbehave, ["hog", "after"], size=1, limits=PoolLimits(max_rss_mb=60))
    assert outcomes["hog"]["status"] == outcomes["after"]["status"] == "ok"
    assert outcomes["hog"]["data"]["pid"] != outcomes["after"]["data"]["pid"], "a fresh worker after the hog"
    small = _outcomes(_ok, ["x", "y"], size=1)
    assert small["x"]["data"]["pid"] == small["y"]["data"]["pid"], "small workers are kept"


def _pool_in_child(result: Any) -> None:
    result.put(sorted(o["status"] for o in _outcomes(_ok, ["a", "b", "c"]).values()))


def test_the_pool_works_inside_a_daemonic_process_like_a_celery_prefork_child() -> None:
    """multiprocessing would fail here: "daemonic processes are not allowed to have children"."""
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_pool_in_child, args=(result,), daemon=True)
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert result.get(timeout=5) == ["ok", "ok", "ok"]


def test_the_pool_works_from_a_thread_like_celerys_thread_pool() -> None:
    found: list[Any] = []
    thread = threading.Thread(target=lambda: found.append(_outcomes(_ok, ["a", "b"])))
    thread.start()
    thread.join(120)
    assert sorted(found[0]) == ["a", "b"]


def test_no_worker_outlives_its_task_process(tmp_path) -> None:
    """The task process killed outright (SIGKILL): its workers notice and exit."""
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        from iati_refresher.worker_pool import run_documents
        from tests.unit.test_worker_pool import _misbehave
        for doc, outcome in run_documents(_misbehave, [{{"id": "sleeper"}}, {{"id": "sleeper"}}], None, size=2,
                                          connections={{}}):
            pass
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = {
            int(p)
            for p in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        }
        time.sleep(0.2)
    assert len(workers) == 2, "two workers started"
    pids_file.write_text(" ".join(map(str, workers)))
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_stopping_early_ends_the_workers() -> None:
    """The caller stops reading (an exception while recording outcomes) while a worker is busy."""
    docs = [{"id": "sleeper"}] + [{"id": f"d{i}"} for i in range(5)]
    iterator = run_documents(_misbehave, docs, None, size=3, connections={}, limits=PoolLimits(document_timeout_s=120))
    started = time.monotonic()
    next(iterator)  # a quick one finishes first; the sleeper is still running
    iterator.close()
    assert time.monotonic() - started < 40
    children = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "iati_refresher.worker_pool"], capture_output=True, text=True
    ).stdout.split()
    assert children == []
