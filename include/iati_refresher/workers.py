"""Per-document work, run in a pool of threads or worker processes.

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
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from iati_refresher import connections
from iati_refresher.log_noise import quiet_noisy_loggers
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore, blob_config_for, open_blob_store
from iati_refresher.worker_pool import PoolLimits, run_documents

log = logging.getLogger(__name__)

WorkerFn = Callable[..., dict[str, Any]]


def init_worker(resolved: dict[str, connections.ConnectionInfo | None]) -> None:
    """Set up a worker process: fix the connections its task resolved, open clients without
    Airflow (its import would cost each worker 2 s and 100 MB), close them at exit, log to stderr."""
    import atexit

    from iati_refresher import storage

    connections.preload(resolved)
    storage.LIGHT_CLIENTS[0] = True
    atexit.register(close_clients)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_noisy_loggers()


#: The clients a process keeps (one per kind and settings: kept-alive connections, not one
#: per document); closed when the worker process exits.
_CLIENTS: dict[tuple[str, Settings], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _kept(kind: str, settings: Settings, factory: Callable[[], Any]) -> Any:
    with _CLIENTS_LOCK:
        if (kind, settings) not in _CLIENTS:
            _CLIENTS[kind, settings] = factory()
        return _CLIENTS[kind, settings]


def _blobs(settings: Settings) -> BlobStore:
    return _kept("blobs", settings, lambda: open_blob_store(blob_config_for(settings)))


def close_clients() -> None:
    """Close the clients this process kept."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


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


def _http(settings: Settings) -> Any:
    from iati_refresher import net

    return _kept("http", settings, lambda: net.http_client(settings))


def validate(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.clients import validator_for
    from iati_refresher.stages import validate as stage

    def work() -> Outcome:
        with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
            path = os.path.join(tmp, "source.xml")
            try:
                _blobs(settings).get_to_file(settings.source_container, f"{doc['hash']}.xml", path)
            except BlobNotFound:
                return Outcome.failed(
                    doc["id"], "source_missing", "the downloaded file is missing from storage", retryable=False
                )
            return stage.validate_document(
                doc, path, _validator(settings, validator_for), settings, now=datetime.now(UTC).replace(tzinfo=None)
            )

    return _guard(doc["id"], work)


def _validator(settings: Settings, factory: Callable[[Settings], Any]) -> Any:
    return _kept("validator", settings, lambda: factory(settings))


def clean(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import clean as stage

    return _guard(doc["id"], lambda: stage.clean_document(doc, doc["report"], _blobs(settings), settings))


def flatten(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import flatten as stage

    return _guard(doc["id"], lambda: stage.flatten_document(doc, _blobs(settings), settings))


def lakify(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import lakify as stage

    return _guard(doc["id"], lambda: stage.lakify_document(doc, _blobs(settings), settings))


def _solr(settings: Settings) -> Any:
    from iati_refresher.clients import solr_for

    # One client (and its kept-alive connections) per worker process, not per document.
    return _kept("solr", settings, lambda: solr_for(settings))


def index(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from iati_refresher.stages import index as stage

    def work() -> Outcome:
        solr = _solr(settings)
        if solr is None:
            return Outcome.skipped(doc["id"], "no_solr", "no Solr connection configured")
        return stage.index_document(doc, _blobs(settings), solr, settings)

    return _guard(doc["id"], work)


# --- pools --------------------------------------------------------------------------------------


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

    ``kind`` is ``process`` (CPU-bound stages: worker processes of
    :mod:`iati_refresher.worker_pool`, which any executor allows), ``thread``
    (network-bound: threads of the task process) or ``inline``.
    """
    if kind == "process":
        limits = PoolLimits(document_timeout_s=settings.document_timeout_s, max_rss_mb=settings.worker_max_rss_mb)
        yield from run_documents(fn, docs, settings, size=size, connections=resolved, limits=limits)
        return
    size = max(1, min(size, len(docs)))
    with connections.preloaded(resolved):
        if kind == "inline" or size == 1:
            for doc in docs:
                yield doc, fn(doc, settings)
        else:
            yield from _run_in_threads(fn, docs, settings, size)


def _run_in_threads(
    fn: WorkerFn, docs: Sequence[dict[str, Any]], settings: Settings, size: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``size`` threads of this process; at most 2 x size documents in flight, so big batches
    don't pile up results."""
    with ThreadPoolExecutor(max_workers=size, thread_name_prefix="refresher") as pool:
        pending: dict[Future[dict[str, Any]], dict[str, Any]] = {}
        queue = list(docs)
        while queue or pending:
            while queue and len(pending) < 2 * size:
                doc = queue.pop(0)
                pending[pool.submit(fn, doc, settings)] = doc
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
