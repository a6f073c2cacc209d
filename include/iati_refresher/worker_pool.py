"""A pool of worker processes for the CPU-bound stages, legal under every Airflow executor.

Why not :mod:`multiprocessing`: Celery's default (prefork) pool runs each task in a daemonic
process, and a daemonic process may not start :mod:`multiprocessing` children
("daemonic processes are not allowed to have children").  The workers here are plain
programs (``python -m iati_refresher.worker_pool``) started with :mod:`subprocess`, which
works in a prefork child, a Celery thread, a Kubernetes pod, the LocalExecutor and
``dag.test()`` alike, and needs no signal handling in the caller.

What a worker process buys over running the stage in the task process:

* memory: a document's peak stays in its worker, and a worker that grew past
  ``max_rss_mb`` (or did ``max_documents`` documents) is replaced by a fresh one;
* isolation: a worker that dies (killed, out of memory, a crash in C code) or overruns the
  per-document deadline costs that one document's outcome (``worker_crashed`` /
  ``worker_timeout``, retryable); a new worker takes the batch's other documents.

Protocol: length-prefixed pickles over the worker's stdin/stdout.  The parent sends
``("init", connections)`` once, then ``("run", function, document, settings)`` per document (the function
travels by its importable name);
the worker answers ``(outcome_dict, peak_rss_kb)``.  The worker's own stdout is moved to
stderr, so anything a library prints lands in the task log, never in the protocol.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from iati_refresher.outcomes import Outcome

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">Q")


def _send(stream: IO[bytes], message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(payload)  # our own process on the other end of a private pipe


@dataclass(frozen=True)
class PoolLimits:
    """How long one document may take and how big a worker may grow before it is replaced."""

    document_timeout_s: float = 3600.0
    max_rss_mb: int = 1024
    max_documents: int = 500


class _Worker:
    """One worker process and the pipe ends that talk to it."""

    def __init__(self, init_message: Any, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iati_refresher.worker_pool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_worker: IO[bytes] = self.proc.stdin
        self.from_worker: IO[bytes] = self.proc.stdout
        self.documents = 0
        self.timed_out = False
        _send(self.to_worker, init_message)

    def run(
        self, fn: Callable[..., dict[str, Any]], doc: dict[str, Any], settings: Any, timeout_s: float
    ) -> tuple[dict[str, Any], int]:
        """The worker's answer for one document; raises _WorkerLost when it died or overran."""
        timer = threading.Timer(timeout_s, self.kill, kwargs={"timed_out": True})
        timer.daemon = True
        self.timed_out = False
        try:
            _send(self.to_worker, ("run", fn, doc, settings))
            timer.start()
            answer = _receive(self.from_worker)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise _WorkerLost(self.describe_death(), timed_out=self.timed_out) from exc
        finally:
            timer.cancel()
        self.documents += 1
        return answer

    def kill(self, *, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def describe_death(self) -> str:
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exited with status {code}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.to_worker.close()  # the worker exits when its input ends
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.from_worker.close()


class _WorkerLost(Exception):
    def __init__(self, how: str, *, timed_out: bool):
        super().__init__(how)
        self.how, self.timed_out = how, timed_out


def run_documents(
    fn: Callable[..., dict[str, Any]],
    docs: Sequence[dict[str, Any]],
    settings: Any,
    *,
    size: int,
    connections: dict[str, Any],
    limits: PoolLimits | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield ``(document, outcome dict)`` as the workers finish them, in completion order.

    ``size`` worker processes share the documents; each calls ``fn(document, settings)``
    (a module-level function: it is sent by name).
    Every document gets exactly one outcome, whatever happens to the workers.
    """
    limits = limits or PoolLimits()
    todo: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
    for doc in docs:
        todo.put(doc)
    size = max(1, min(size, len(docs)))
    for _ in range(size):
        todo.put(None)  # one stop marker per driver
    results: queue.SimpleQueue[tuple[dict[str, Any], dict[str, Any]] | None] = queue.SimpleQueue()
    stopping = threading.Event()
    active: set[_Worker] = set()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    init_message = ("init", connections)

    def drive() -> None:
        worker: _Worker | None = None
        try:
            while not stopping.is_set():
                doc = todo.get()
                if doc is None:
                    return
                try:
                    if worker is None:
                        worker = _Worker(init_message, env)
                        active.add(worker)
                    outcome, peak_rss_kb = worker.run(fn, doc, settings, limits.document_timeout_s)
                except _WorkerLost as lost:
                    active.discard(worker)  # type: ignore[arg-type]
                    worker = None
                    if stopping.is_set():
                        return
                    results.put((doc, _lost_outcome(doc, lost, limits)))
                    continue
                except Exception as exc:  # could not even start a worker: this document fails, visibly
                    log.exception("could not run %s on %s in a worker process", fn.__name__, doc.get("id"))
                    results.put(
                        (
                            doc,
                            Outcome.failed(
                                doc["id"], "worker_unavailable", f"no worker process: {exc}", retryable=True
                            ).to_dict(),
                        )
                    )
                    worker = None
                    continue
                results.put((doc, outcome))
                if worker.documents >= limits.max_documents or peak_rss_kb > limits.max_rss_mb * 1024:
                    active.discard(worker)
                    worker.close()  # its memory goes back to the system; the next document gets a new one
                    worker = None
        finally:
            if worker is not None:
                active.discard(worker)
                worker.close()
            results.put(None)

    drivers = [threading.Thread(target=drive, name=f"{fn.__name__}-driver-{i}", daemon=True) for i in range(size)]
    for driver in drivers:
        driver.start()
    finished = 0
    try:
        while finished < size:
            item = results.get()
            if item is None:
                finished += 1
                continue
            yield item
    finally:
        # The caller may stop early (an exception while recording): end the workers with us.
        stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                todo.get_nowait()
        for _ in drivers:
            todo.put(None)
        for worker in list(active):
            worker.kill()
        for driver in drivers:
            driver.join(timeout=30)


def _lost_outcome(doc: dict[str, Any], lost: _WorkerLost, limits: PoolLimits) -> dict[str, Any]:
    if lost.timed_out:
        return Outcome.failed(
            doc["id"],
            "worker_timeout",
            f"processing took longer than {limits.document_timeout_s:.0f} s; the worker was stopped",
            retryable=True,
        ).to_dict()
    return Outcome.failed(
        doc["id"],
        "worker_crashed",
        f"the worker process died while processing this document ({lost.how})",
        retryable=True,
    ).to_dict()


# --- the worker process ------------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Exit when the task process is gone (killed): no worker outlives its task."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def worker_main() -> int:
    # The protocol owns the original stdin/stdout; print() and stray library output go to stderr.
    to_parent = os.fdopen(os.dup(1), "wb")
    from_parent = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()

    import resource

    from iati_refresher import workers

    try:
        kind, resolved = _receive(from_parent)
    except EOFError:
        return 0
    if kind != "init":
        raise SystemExit(f"unexpected first message {kind!r}")
    workers.init_worker(resolved)
    while True:
        try:
            _, fn, doc, settings = _receive(from_parent)
        except EOFError:
            return 0
        outcome = fn(doc, settings)
        _send(to_parent, (outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


if __name__ == "__main__":
    sys.exit(worker_main())
