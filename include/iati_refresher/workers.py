"""Per-document work, run in a pool of threads or processes.

Every function here runs in a worker: it gets plain values (a document row, settings),
opens its own clients from connections the task resolved for it (workers cannot ask
Airflow), calls one stage function and returns an :class:`Outcome` as a dict.  An
unexpected exception becomes a retryable ``internal_error`` outcome for that one document,
so one bad file never fails its batch; the retry cap parks it visibly if it keeps failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from functools import cache
from multiprocessing import get_context
from typing import Any

from iati_refresher import connections
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore, blob_config_for, open_blob_store

log = logging.getLogger(__name__)

WorkerFn = Callable[..., dict[str, Any]]


def init_worker(resolved: dict[str, connections.ConnectionInfo | None]) -> None:
    """Process-pool initializer: fix the connections this task resolved."""
    connections.preload(resolved)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One INFO line per HTTP request (Solr, validator, blob service) would flood the task log.
    for noisy in ("azure", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cache
def _blobs(settings: Settings) -> BlobStore:
    return open_blob_store(blob_config_for(settings))


def _guard(document_id: str, work: Callable[[], Outcome]) -> dict[str, Any]:
    try:
        return work().to_dict()
    except BlobStorageError as exc:
        return Outcome.failed(document_id, "storage_error", f"blob storage: {exc}", retryable=True).to_dict()
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
        log.exception("document %s: unexpected error", document_id)
        return Outcome.failed(document_id, "internal_error", f"{detail}{at}", retryable=True).to_dict()


# --- one function per stage ----------------------------------------------------------------


def download(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import download as stage

    return _guard(doc["id"], lambda: stage.download_document(doc, _blobs(settings), settings, client=_http(settings)))


@cache
def _http(settings: Settings) -> Any:
    from iati_refresher import net

    return net.http_client(settings)


def validate(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.clients import validator_for
    from iati_refresher.stages import validate as stage

    def work() -> Outcome:
        with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
            path = os.path.join(tmp, "source.xml")
            try:
                _blobs(settings).get_to_file(settings.source_container, f"{doc['hash']}.xml", path)
            except BlobNotFound:
                return Outcome.failed(doc["id"], "source_missing", "the downloaded file is missing from storage",
                                      retryable=False)
            return stage.validate_document(
                doc, path, _validator(settings, validator_for), settings, now=datetime.now(UTC).replace(tzinfo=None)
            )

    return _guard(doc["id"], work)


_VALIDATORS: dict[Settings, Any] = {}


def _validator(settings: Settings, factory: Callable[[Settings], Any]) -> Any:
    if settings not in _VALIDATORS:
        _VALIDATORS[settings] = factory(settings)
    return _VALIDATORS[settings]


def clean(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import clean as stage

    return _guard(doc["id"], lambda: stage.clean_document(doc, doc["report"], _blobs(settings), settings))


def flatten(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import flatten as stage

    return _guard(doc["id"], lambda: stage.flatten_document(doc, _blobs(settings), settings))


def lakify(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import lakify as stage

    return _guard(doc["id"], lambda: stage.lakify_document(doc, _blobs(settings), settings))


@cache
def _solr(settings: Settings) -> Any:
    from iati_refresher.clients import solr_for

    # One client (and its kept-alive connections) per worker process, not per document.
    return solr_for(settings)


def index(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import index as stage

    def work() -> Outcome:
        solr = _solr(settings)
        if solr is None:
            return Outcome.skipped(doc["id"], "no_solr", "no Solr connection configured")
        return stage.index_document(doc, _blobs(settings), solr, settings)

    return _guard(doc["id"], work)


STAGE_WORKERS: dict[str, WorkerFn] = {
    "download": download,
    "validate": validate,
    "clean": clean,
    "flatten": flatten,
    "lakify": lakify,
    "index": index,
}


# --- pools --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _children_skip_main_module() -> Iterator[None]:
    """Keep spawned workers from re-running the parent's ``__main__``.

    A spawned child normally re-imports the parent's main module; under Airflow that is the
    ``airflow`` command itself, which fails outside a task.  The workers only need
    :mod:`iati_refresher.workers`, which they import by name.
    """
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _kill_workers(executor: Executor) -> None:
    """Kill what is left of a broken process pool.

    CPython's own clean-up terminates the workers it knows and then waits for all of them;
    a worker started while the pool was breaking can miss the terminate, and the wait (and
    so this task) then hangs for ever.
    """
    processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.kill()


def run_pool(
    fn: WorkerFn,
    docs: Sequence[dict[str, Any]],
    settings: Settings,
    *,
    kind: str,
    size: int,
    resolved: dict[str, connections.ConnectionInfo | None],
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield (doc, outcome dict) as documents finish, in completion order.

    ``kind`` is ``process`` (CPU-bound stages), ``thread`` (network-bound) or ``inline``.
    A crashed worker process (killed, out of memory) fails only the documents it had not
    finished, as retryable ``worker_crashed`` outcomes.
    """
    size = max(1, min(size, len(docs)))
    # One document still gets a worker process: a file too big to share a batch comes alone,
    # and its memory (and any crash) must stay out of the task process.
    if kind == "inline" or (size == 1 and kind != "process"):
        with connections.preloaded(resolved):
            for doc in docs:
                yield doc, fn(doc, settings)
        return
    executor: Executor
    if kind == "process":
        executor = ProcessPoolExecutor(
            max_workers=size, mp_context=get_context("spawn"), initializer=init_worker, initargs=(resolved,)
        )
    else:
        executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="refresher")
    with connections.preloaded(resolved), _children_skip_main_module(), executor:
        pending: dict[Future[dict[str, Any]], dict[str, Any]] = {}
        queue = list(docs)
        # Keep at most 2 x size documents in flight: big batches don't pile up results.
        while queue or pending:
            while queue and len(pending) < 2 * size:
                try:
                    future = executor.submit(fn, queue[0], settings)
                except BrokenProcessPool:
                    # A worker died while the caller was recording an outcome: the pending
                    # futures fail with BrokenProcessPool below and take the queue with them.
                    _kill_workers(executor)
                    break
                pending[future] = queue.pop(0)
            if not pending:  # the pool broke before anything was in flight
                for other in queue:
                    yield other, Outcome.failed(
                        other["id"], "worker_crashed", "the worker pool broke before this document started",
                        retryable=True,
                    ).to_dict()
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                doc = pending.pop(future)
                try:
                    yield doc, future.result()
                except BrokenProcessPool:
                    _kill_workers(executor)
                    yield doc, Outcome.failed(
                        doc["id"], "worker_crashed", "the worker process died while processing this document",
                        retryable=True,
                    ).to_dict()
                    for other, rest in [(pending.pop(f), f) for f in list(pending)]:
                        rest.cancel()
                        yield other, Outcome.failed(
                            other["id"], "worker_crashed", "the worker pool broke before this document finished",
                            retryable=True,
                        ).to_dict()
                    for other in queue:
                        yield other, Outcome.failed(
                            other["id"], "worker_crashed", "the worker pool broke before this document started",
                            retryable=True,
                        ).to_dict()
                    return
