"""A broken process pool is cleaned up by killing every worker it has left."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from iati_refresher.workers import _kill_workers


def test_kill_workers_leaves_no_worker_running() -> None:
    executor = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"))
    try:
        assert executor.submit(os.getpid).result(timeout=60) > 0
        processes = list(executor._processes.values())
        assert processes and all(p.is_alive() for p in processes)
        _kill_workers(executor)
        deadline = time.monotonic() + 10
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(p.is_alive() for p in processes)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_kill_workers_accepts_a_pool_without_processes() -> None:
    executor = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
    _kill_workers(executor)
    executor.shutdown(wait=True)
