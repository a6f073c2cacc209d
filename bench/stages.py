"""Throughput and peak memory of every stage, optionally side by side with the reference.

Usage::

    python bench/stages.py CORPUS_DIR [--big PATH | --make-big MB] [--repeat N] [--stages a,b,...]
                           [--reference CHECKOUT [--reference-python EXE] [--reference-env FILE]]

Benchmarks the files under ``CORPUS_DIR/derived`` (the 40 MB file) and, optionally, a
large file (``--big PATH``, e.g. from ``bench/make_big_file.py``; or ``--make-big 400``
builds one in a temporary directory and deletes it afterwards).  Each stage runs in a
fresh subprocess, so its peak RSS (``VmHWM``) is its own:

* ``iterparse``: a bare lxml iterparse over the same bytes (the baseline);
* ``download``: :func:`download_document` fetching the file from a loopback HTTP server
  into a local store (the server runs in this process, not in the measured one);
* ``validate``: :func:`validate_document` with the built-in validator (a schema check, then
  the full report with per-activity results, as for a schema-invalid file);
* ``clean``: reducing the file to every other activity (the streaming path; a valid file
  is only copied);
* ``flatten``: :func:`flatten_file` to a temporary JSON lines file;
* ``lakify``: :func:`lakify_document` into a :class:`LocalBlobStore` in a temporary directory;
* ``lakify-shm``: the same with the store in ``/dev/shm`` (memory), when it exists: file
  creation on some virtual disks costs far more than the stage itself, so this row shows
  what the stage does when storage is not the bottleneck;
* ``lake-iter``: :func:`iter_lake_entries` alone (parse, serialise, JSON), no storage;
* ``index-docs``: :func:`index_document` with a Solr client that only serialises the
  requests (the stage's own work: flat file, lake texts, Solr documents, JSON bodies);
* ``index``: :func:`index_document` against a real SolrCloud (``solr/runner``; ``--solr standin``:
  the lean Solr stand-in of ``bench/e2e.py``)
  (running in its own process: its time is in the wall time, not in the stage's CPU).

Prints wall, user and system seconds, activities/s, MB/s (10^6 bytes of input per second),
peak RSS, the throughput as a share of the bare iterparse and the speed-up over the
reference.  High system time means the storage (file creation), not the stage, is the
bottleneck.

``--reference CHECKOUT`` runs the reference refresher's own code from a checkout of
IATI/refresher given by you (``CHECKOUT/src/library/{flatten,lakify,clean,solrize}.py``), on the
same files, each in a fresh subprocess, and prints the ratios ours/reference and each
side's share of the bare iterparse of the same run:

* ``flatten``: ``library.flatten.Flattener().process(path)``;
* ``clean``: ``library.clean.clean_invalid_documents`` (same every-other-activity report);
* ``lakify`` / ``lakify-shm``: ``library.lakify.process_hash_list``;
* ``index-docs``: ``library.solrize.process_hash_list`` with pysolr's own document building and
  serialisation of every update request, Solr answered by a recorder (no network on either
  side); its inputs (the reference's flatten output as ``jsonb`` gives it back, and its
  lakify's blobs) are prepared untimed;

with their database calls answered by an inert stand-in and their Azure blob client
replaced by one that reads and writes local files (the same directories ours uses).
Third-party modules the measured code does not need (e.g. ``prometheus_client``) are
replaced by inert modules when missing; use ``--reference-python`` to run the reference
with its own virtualenv instead, and ``--reference-env`` to load its environment variables
(``KEY=VALUE`` lines).  When the layout differs from what this harness expects, it says
which file or name is missing.  Without ``--reference`` no reference figures are shown: a
ratio is only ever computed between two measurements of the same run (this machine's speed
moves 2-3x between days).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

STAGES = (
    "iterparse",
    "download",
    "validate",
    "clean",
    "flatten",
    "lakify",
    "lakify-shm",
    "lake-iter",
    "index-docs",
    "index",
)
# Our stage → the reference stage it is compared with (run by the reference harness).
REFERENCE_STAGES = {
    "clean": "clean",
    "flatten": "flatten",
    "lakify": "lakify",
    "lakify-shm": "lakify-shm",
    "index-docs": "index-docs",
}
REFERENCE_FILES = (
    "library/flatten.py",
    "library/lakify.py",
    "library/clean.py",
    "library/solrize.py",
    "constants/config.py",
)
SHM = "/dev/shm"
BENCH_HASH = "b" * 40  # a well-formed SHA-1 for the document the stages process


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def activity_names(path: str) -> list[str]:
    """The Validator's meta name of each activity of ``path``: its identifier (as the
    Validator reads it: the first ``iati-identifier``'s text), ``X(n)`` for the n-th repeat,
    ``noIdentifier`` for none.  Read with the standard library's parser so the reference's
    interpreter can run it too."""
    import xml.etree.ElementTree as ElementTree

    names, seen = [], {}
    for _event, element in ElementTree.iterparse(path, events=("end",)):
        if element.tag != "iati-activity":
            continue
        node = element.find("iati-identifier")
        name = "".join(node.itertext()).strip().replace("\r", "").replace("\n", "") if node is not None else ""
        name = name or "noIdentifier"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}({seen[name]})")
        element.clear()
    return names


def every_other_activity_report(path: str) -> dict[str, Any]:
    """A validation report marking every other activity valid (the clean stage's input)."""
    return {
        "valid": False,
        "fileType": "iati-activities",
        "iatiVersion": "2.03",
        "iati-activities": [
            {"identifier": name, "valid": i % 2 == 0, "index": i} for i, name in enumerate(activity_names(path))
        ],
    }


class SerialisingSolr:
    """A Solr client for ``index-docs``: no index yet, requests serialised as the real client
    does, then dropped.  Counts documents and request bytes."""

    def __init__(self) -> None:
        from iati_refresher.solr_client import _json_body

        self._body = _json_body
        self.documents = 0
        self.request_bytes = 0

    def iter_ids(self, collection: str, q: str = "*:*", page_size: int = 1000) -> Any:
        return iter(())

    def add(self, collection: str, docs: Any, commit_within_ms: int | None = None) -> int:
        docs = list(docs)
        self.request_bytes += len(self._body(docs))
        self.documents += len(docs)
        return len(docs)

    def delete_ids(self, collection: str, ids: Any, commit_within_ms: int | None = None) -> int:
        return 0

    def delete_query(self, collection: str, q: str, commit_within_ms: int | None = None) -> None:
        return None


def run_stage(stage: str, path: str, activities: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage on ``path`` in this process; returns timings and counts."""
    from lxml import etree

    from iati_refresher.settings import Settings
    from iati_refresher.stages.clean import clean_file
    from iati_refresher.stages.flatten import flatten_document, flatten_file
    from iati_refresher.stages.lakify import iter_lake_entries, lakify_document
    from iati_refresher.storage import LocalBlobStore

    extra = extra or {}
    base = SHM if stage == "lakify-shm" else None
    doc: dict[str, Any] = {"id": "bench", "hash": BENCH_HASH}
    with tempfile.TemporaryDirectory(prefix=f"bench-{stage}-", dir=base) as tmp:
        # The download limit (100 MB by default) would refuse the big benchmark files.
        settings = Settings(
            local_blob_dir=tmp,
            allow_private_addresses=True,
            max_download_bytes=max(Settings().max_download_bytes, os.path.getsize(path) + 1),
        )
        setup: Any = None
        if stage == "clean":
            setup = every_other_activity_report(path)
        elif stage in ("lakify", "lakify-shm", "index-docs", "index"):
            setup = LocalBlobStore(tmp)
            setup.put_file(settings.clean_container, f"{BENCH_HASH}.xml", path)
            if stage.startswith("index"):
                # untimed: the index stage's input, as flatten and lakify leave it
                flat = flatten_document(doc, setup, settings)
                doc["flattened_activities"] = flat.data.get("manifest")
                lakify_document(doc, setup, settings)
        elif stage == "download":
            from iati_refresher import net

            setup = (LocalBlobStore(tmp), net.http_client(settings))
            doc["cached_dataset_url"] = extra["url"]
        elif stage == "validate":
            from iati_refresher.validator_client import BuiltinValidatorClient

            setup = BuiltinValidatorClient(settings.schemas_dir)
            doc.update(
                downloaded=dt.datetime(2000, 1, 1),
                file_schema_valid=None,
                black_flag=None,
                regenerate_validation_report=False,
            )
        start_wall, start_times = time.perf_counter(), os.times()
        if stage == "iterparse":
            count = 0
            root = None
            for _event, element in etree.iterparse(path, events=("end",), tag="iati-activity", huge_tree=True):
                count += 1
                root = element.getparent()
                element.clear(keep_tail=False)
                while element.getprevious() is not None:
                    del root[0]
            result: dict[str, Any] = {"activities": count}
        elif stage == "download":
            from iati_refresher.stages.download import download_document

            outcome = download_document(doc, setup[0], settings, client=setup[1])
            if outcome.status != "ok":
                raise RuntimeError(f"download failed: {outcome}")
            result = {"activities": activities, "output_bytes": outcome.data.get("bytes")}
        elif stage == "validate":
            from iati_refresher.stages.validate import validate_document

            outcome = validate_document(doc, path, setup, settings, now=dt.datetime(2001, 1, 1))
            report = outcome.data.get("report") or {}
            result = {
                "activities": len(report.get("iati-activities") or []),
                "status": outcome.status,
                "valid": report.get("valid"),
            }
        elif stage == "clean":
            cleaned = clean_file(path, setup, os.path.join(tmp, "clean.xml"))
            result = {"activities": cleaned.activities_total, "kept": cleaned.activities_kept}
        elif stage == "flatten":
            flat = flatten_file(path, os.path.join(tmp, "flat.jsonl"))
            result = {"activities": flat.activities, "output_bytes": flat.bytes}
        elif stage == "lake-iter":
            sizes = [len(entry.xml) + len(entry.json.encode("utf-8")) for entry in iter_lake_entries(path)]
            result = {"activities": len(sizes), "output_bytes": sum(sizes)}
        elif stage in ("lakify", "lakify-shm"):
            outcome = lakify_document(doc, setup, settings)
            if outcome.status != "ok":
                raise RuntimeError(f"lakify failed: {outcome}")
            result = dict(outcome.data)
        elif stage in ("index-docs", "index"):
            from iati_refresher.stages.index import index_document

            if stage == "index":
                from iati_refresher.connections import ConnectionInfo
                from iati_refresher.solr_client import client_from_connection

                solr: Any = client_from_connection(
                    ConnectionInfo("solr", "iati_solr", host=extra["solr_url"]), settings
                )
            else:
                solr = SerialisingSolr()
            outcome = index_document(doc, setup, solr, settings)
            if outcome.status != "ok":
                raise RuntimeError(f"index failed: {outcome}")
            result = dict(outcome.data)
            if isinstance(solr, SerialisingSolr):
                result["request_bytes"] = solr.request_bytes
        else:
            raise ValueError(f"unknown stage {stage}")
        result["seconds"] = time.perf_counter() - start_wall
        end_times = os.times()
        result["user_seconds"] = end_times.user - start_times.user
        result["system_seconds"] = end_times.system - start_times.system
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---------------------------------------------------------------------------------------
# the reference, loaded from a checkout given by the user (never part of this repository)
# ---------------------------------------------------------------------------------------


class ReferenceLayoutError(RuntimeError):
    """The checkout is missing, or not laid out as this harness expects."""


class ReferenceRunError(RuntimeError):
    """The reference's code ran but reported a failure for the file."""


def reference_src(checkout: str | os.PathLike[str]) -> Path:
    """The reference's ``src`` directory in ``checkout`` (or ``checkout`` itself if it is one).

    :raises ReferenceLayoutError: no such directory, or a module the harness calls is missing.
    """
    root = Path(checkout)
    if not root.is_dir():
        raise ReferenceLayoutError(f"--reference {checkout}: no such directory (give a checkout of IATI/refresher)")
    src = root / "src" if (root / "src").is_dir() else root
    missing = [name for name in REFERENCE_FILES if not (src / name).is_file()]
    if missing:
        raise ReferenceLayoutError(
            f"--reference {checkout}: not the IATI refresher layout this harness knows; missing "
            + ", ".join(str(src / name) for name in missing)
        )
    return src


class _Inert:
    """Anything: every attribute, call and item gives another inert object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> _Inert:
        return _Inert()

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __getitem__(self, key: Any) -> _Inert:
        return _Inert()

    def __iter__(self) -> Any:
        return iter(())


class _InertModule(types.ModuleType):
    """A stand-in for a missing third-party module the measured code never really uses."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert


class FakeDatabase:
    """The reference's ``library.db`` functions, answered without a database.

    Every call is recorded; calls whose name says they record an error are the reference
    reporting a failure (:meth:`errors`).
    """

    ERROR_WORDS = ("error", "notdownloaded", "unfound")

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return _Inert() if name == "getDirectConnection" else None

        return call

    def errors(self) -> list[str]:
        return [
            f"{name}{args[1:]}" for name, args in self.calls if any(word in name.lower() for word in self.ERROR_WORDS)
        ]


class _FakeDownloader:
    def __init__(self, data: bytes):
        self._data = data

    def content_as_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        return self._data

    def readall(self) -> bytes:
        return self._data

    def content_as_text(self, *args: Any, encoding: str = "UTF-8", **kwargs: Any) -> str:
        return self._data.decode(args[1] if len(args) > 1 else encoding)

    def readinto(self, stream: Any) -> int:
        stream.write(self._data)
        return len(self._data)


class _FakeBlob:
    def __init__(self, service: FakeBlobService, container: Any, name: str):
        self.service, self.container, self.name = service, container, name
        self.url = f"fake://{container}/{name}"

    def download_blob(self, *args: Any, **kwargs: Any) -> _FakeDownloader:
        return _FakeDownloader(self.service.read(self.container, self.name))

    def upload_blob(self, data: Any, *args: Any, **kwargs: Any) -> None:
        if hasattr(data, "read"):
            data = data.read()
        if isinstance(data, str):
            data = data.encode(kwargs.get("encoding") or "utf-8")
        self.service.write(self.container, self.name, data)

    def start_copy_from_url(self, url: str, *args: Any, **kwargs: Any) -> None:
        container, name = url.removeprefix("fake://").split("/", 1)
        self.service.write(self.container, self.name, self.service.read(container, name))

    def __getattr__(self, name: str) -> Any:  # set_blob_tags, delete_blob...
        return _Inert()


class FakeBlobService:
    """The Azure ``BlobServiceClient`` the reference uses, over a local directory.

    Reads of any container fall back to ``sources`` (blob name → local file), so the
    reference finds the benchmarked file whatever container names its configuration has.
    """

    root: Path = Path(tempfile.gettempdir())
    sources: dict[str, str] = {}
    written: list[int] = []

    @classmethod
    def from_connection_string(cls, *args: Any, **kwargs: Any) -> FakeBlobService:
        return cls()

    def get_blob_client(self, container: Any = None, blob: str = "", **kwargs: Any) -> _FakeBlob:
        return _FakeBlob(self, container, blob)

    def get_container_client(self, container: Any = None, **kwargs: Any) -> Any:
        return _Inert()

    def _path(self, container: Any, name: str) -> Path:
        return self.root / str(container) / name

    def read(self, container: Any, name: str) -> bytes:
        path = self._path(container, name)
        if path.is_file():
            return path.read_bytes()
        if name in self.sources:
            return Path(self.sources[name]).read_bytes()
        from azure.core.exceptions import ResourceNotFoundError

        raise ResourceNotFoundError(f"{container}/{name}")

    def write(self, container: Any, name: str, data: bytes) -> None:
        path = self._path(container, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written.append(len(data))


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes) as a dict."""
    values = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        values[key.strip()] = value.strip().strip("'\"")
    return values


def import_reference(src: Path, module: str, stub_missing: bool = True, max_stubs: int = 10) -> tuple[Any, list[str]]:
    """Import ``module`` (e.g. ``library.flatten``) from the reference's ``src``.

    Missing third-party modules are replaced by inert ones (at most ``max_stubs``) when
    ``stub_missing``; modules of the checkout itself never are.

    :return: (module, names of the modules that were stubbed).
    :raises ReferenceLayoutError: the import fails for another reason.
    """
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    stubbed: list[str] = []
    while True:
        try:
            return importlib.import_module(module), stubbed
        except ModuleNotFoundError as exc:
            name = exc.name or ""
            top = name.split(".")[0]
            own = (src / top).exists() or (src / f"{top}.py").exists()
            if not stub_missing or not name or own or len(stubbed) >= max_stubs:
                raise ReferenceLayoutError(
                    f"importing {module} from {src} failed: {exc} (run with --reference-python pointing at a "
                    "Python that has the reference's requirements installed)"
                ) from exc
            for part in _parents(name):
                sys.modules.setdefault(part, _InertModule(part))
            stubbed.append(name)
            for loaded in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
                sys.modules.pop(loaded, None)
        except Exception as exc:
            raise ReferenceLayoutError(
                f"importing {module} from {src} failed: {type(exc).__name__}: {exc} (the reference reads its "
                "settings from environment variables: pass them with --reference-env FILE)"
            ) from exc


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _require(module: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise ReferenceLayoutError(
            f"{module.__name__} ({getattr(module, '__file__', '?')}) has no {', '.join(missing)}: this checkout's "
            "layout differs from the one the harness knows"
        )


def jsonb_roundtrip(value: Any) -> Any:
    """What PostgreSQL's ``jsonb`` gives back: object keys sorted by length in bytes, then bytewise."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return {k: jsonb_roundtrip(value[k]) for k in keys}
    if isinstance(value, list):
        return [jsonb_roundtrip(v) for v in value]
    return value


class RecordingDatabase(FakeDatabase):
    """``library.db`` for flatten and solrize: keeps what flatten stored, gives it back as jsonb did."""

    def __init__(self, flattened: str | None = None) -> None:
        super().__init__()
        self.flattened = flattened

    def completeFlatten(self, conn: Any, doc_id: str, flattened: str) -> None:
        self.calls.append(("completeFlatten", (conn, doc_id)))
        self.flattened = flattened

    def getFlattenedActivitiesForDoc(self, conn: Any, doc_id: str) -> Any:
        self.calls.append(("getFlattenedActivitiesForDoc", (conn, doc_id)))
        return None if self.flattened is None else (jsonb_roundtrip(json.loads(self.flattened)),)


# What the reference's configuration needs to import solrize (its Solr URL is never reached).
REFERENCE_ENV = {
    "SOLR_API_URL": "http://solr.invalid/solr/",
    "SOLR_USER": "u",
    "SOLR_PASSWORD": "p",
    "SOLR_500_SLEEP": "0",
    "AZURE_STORAGE_CONNECTION_STRING": "fake",
    "AZURE_STORAGE_CONTAINER_SOURCE": "source",
    "AZURE_STORAGE_CONTAINER_CLEAN": "clean",
    "ACTIVITIES_LAKE_CONTAINER_NAME": "lake",
    "LOG_LEVEL": "error",
}


class _RecordedResponse:
    status_code = 200
    headers: dict[str, str] = {}
    content = b'{"responseHeader":{"status":0,"QTime":0}}'
    text = content.decode()


class SolrRecorder:
    """A ``requests.Session`` for pysolr: every request answered 200, request bodies counted.

    pysolr's own work (building and serialising the update body, sanitising it) runs as it
    would against Solr; only the network round trip is left out, as on this project's side.
    """

    requests = 0
    request_bytes = 0

    def _answer(self, url: str, data: Any = None, **kwargs: Any) -> _RecordedResponse:
        SolrRecorder.requests += 1
        SolrRecorder.request_bytes += len(data or b"")
        return _RecordedResponse()

    post = get = _answer


def _recording_pysolr(pysolr: Any) -> Any:
    class RecordingSolr(pysolr.Solr):
        def get_session(self) -> Any:
            if self.session is None:
                self.session = SolrRecorder()
            return self.session

    return RecordingSolr


def _prepare_reference_index(src: Path, path: str, database: RecordingDatabase) -> None:
    """The index stage's input, prepared untimed by the reference's own flatten and lakify."""
    flatten, _ = import_reference(src, "library.flatten")
    database.flattened = json.dumps(flatten.Flattener().process(path))
    lakify, _ = import_reference(src, "library.lakify")
    lakify.db = database
    lakify.BlobServiceClient = FakeBlobService
    lakify.process_hash_list([(BENCH_HASH, dt.datetime(2000, 1, 1), "bench")])


def run_reference_stage(stage: str, src: Path, path: str, activities: int) -> dict[str, Any]:
    """Run the reference's code for ``stage`` on ``path`` in this process (see the module docstring)."""
    base = SHM if stage == "lakify-shm" else None
    for key, value in REFERENCE_ENV.items():
        os.environ.setdefault(key, value)
    module_name = {
        "flatten": "library.flatten",
        "clean": "library.clean",
        "lakify": "library.lakify",
        "lakify-shm": "library.lakify",
        "index-docs": "library.solrize",
    }.get(stage)
    if module_name is None:
        raise ReferenceLayoutError(f"no reference harness for the {stage} stage")
    module, stubbed = import_reference(src, module_name)
    with tempfile.TemporaryDirectory(prefix=f"bench-ref-{stage}-", dir=base) as tmp:
        database = RecordingDatabase()
        FakeBlobService.root = Path(tmp)
        FakeBlobService.sources = {f"{BENCH_HASH}.xml": path}
        FakeBlobService.written = []
        if stage == "index-docs":
            _prepare_reference_index(src, path, database)
            _require(module, "pysolr", "process_hash_list")
            module.pysolr.Solr = _recording_pysolr(module.pysolr)
            SolrRecorder.requests = SolrRecorder.request_bytes = 0
        if stage != "flatten":
            _require(module, "db", "BlobServiceClient")
            module.db = database
            module.BlobServiceClient = FakeBlobService
        start_wall, start_times = time.perf_counter(), os.times()
        if stage == "flatten":
            _require(module, "Flattener")
            output = module.Flattener().process(path)
            result: dict[str, Any] = {"activities": len(output)}
        elif stage == "clean":
            _require(module, "clean_invalid_documents")
            index = every_other_activity_report(path)["iati-activities"]
            module.clean_invalid_documents([(BENCH_HASH, "bench", index)])
            result = {"activities": activities, "output_bytes": sum(FakeBlobService.written)}
        elif stage == "index-docs":
            module.process_hash_list([(BENCH_HASH, "bench", None)])
            result = {
                "activities": activities,
                "requests": SolrRecorder.requests,
                "request_bytes": SolrRecorder.request_bytes,
            }
        else:
            _require(module, "process_hash_list")
            module.process_hash_list([(BENCH_HASH, dt.datetime(2000, 1, 1), "bench")])
            result = {"activities": len(FakeBlobService.written) // 2, "output_bytes": sum(FakeBlobService.written)}
        result["seconds"] = time.perf_counter() - start_wall
        end_times = os.times()
        result["user_seconds"] = end_times.user - start_times.user
        result["system_seconds"] = end_times.system - start_times.system
        errors = database.errors()
        if stage == "index-docs" and not SolrRecorder.requests:
            errors.append("no Solr request was made")
        if errors or (stage not in ("flatten", "index-docs") and not FakeBlobService.written):
            raise ReferenceRunError(f"the reference's {stage} reported a failure: {errors or 'nothing was written'}")
    result["peak_rss_mb"] = peak_rss_mb()
    result["stubbed_modules"] = stubbed
    return result


# ---------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------


class _FileServer:
    """Serves one file at ``/file.xml`` on loopback (for the download stage)."""

    def __init__(self, path: Path):
        data_path = path

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                size = data_path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(data_path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1024 * 1024)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file.xml"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def measure(
    stage: str,
    path: Path,
    activities: int,
    repeat: int,
    *,
    extra: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Best (fastest) of ``repeat`` fresh subprocesses; the peak RSS is the highest seen.

    :param reference: ``{"src": ..., "python": ..., "env": {...}}`` to run the reference's code instead.
    """
    runs = []
    for _ in range(repeat):
        if reference is not None:
            command = [
                reference["python"],
                __file__,
                "--reference-worker",
                stage,
                str(path),
                str(activities),
                str(reference["src"]),
            ]
            env = {**os.environ, **reference["env"]}
        else:
            command = [sys.executable, __file__, "--worker", stage, str(path), str(activities), json.dumps(extra or {})]
            env = None
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = completed.stdout.strip().splitlines()
        if completed.returncode != 0 or not lines:
            raise RuntimeError(f"{stage} failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}")
        answer = json.loads(lines[-1])
        if "error" in answer:
            raise RuntimeError(answer["error"])
        runs.append(answer)
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


SOLR_KIND = ["real"]  # set from --solr


def _solr_busy(extra: dict[str, Any], stage: str) -> float | None:
    """Seconds real Solr has spent in /update so far (None unless the stage is ``index`` on real Solr)."""
    if stage != "index" or SOLR_KIND[0] != "real" or "solr_url" not in extra:
        return None
    from e2e import real_solr_stats

    return real_solr_stats(extra["solr_url"])["busy_s"]


def bench_file(path: Path, repeat: int, stages: list[str], reference: dict[str, Any] | None) -> list[dict[str, Any]]:
    size_mb = path.stat().st_size / 1e6
    print(f"\n{path.name}: {size_mb:.1f} MB")
    baseline = measure("iterparse", path, 0, repeat)
    activities = baseline["activities"]
    header = (
        f"{'stage':<12}{'seconds':>9}{'user':>7}{'sys':>7}{'MB/s':>8}{'act/s':>8}{'peak RSS':>11}"
        f"{'vs iterparse':>14}{'vs reference':>14}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    extra: dict[str, Any] = {}
    server = _FileServer(path) if "download" in stages else None
    solr = None
    if "index" in stages:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        if SOLR_KIND[0] == "real":
            from iati_refresher.local.solr import LocalSolrCloud

            solr = LocalSolrCloud(heap_mb=1024).start()
            extra["solr_url"] = solr.url
        else:
            from e2e import StandIn

            solr = StandIn("solr")
            extra["solr_url"] = solr.info["url"]
    if server is not None:
        extra["url"] = server.url
    try:
        for stage in stages:
            if stage == "lakify-shm" and not os.path.isdir(SHM):
                continue
            try:
                solr_before = _solr_busy(extra, stage)
                r = baseline if stage == "iterparse" else measure(stage, path, activities, repeat, extra=extra)
                if solr_before is not None:
                    # Solr's own time in /update over all repeats; the stage's best run is one of them.
                    busy = (_solr_busy(extra, stage) or 0.0) - solr_before
                    r["solr_update_s_per_run"] = round(busy / repeat, 2)
            except RuntimeError as exc:
                print(f"{stage:<12}failed: {str(exc).strip().splitlines()[-1]}")
                continue
            ref_row = None
            if reference is not None and stage in REFERENCE_STAGES:
                try:
                    ref_row = measure(REFERENCE_STAGES[stage], path, activities, repeat, reference=reference)
                except RuntimeError as exc:
                    print(f"{'':<12}reference {stage}: {exc}")
            mb_s = size_mb / r["seconds"]
            act_s = activities / r["seconds"]
            share = baseline["seconds"] / r["seconds"]
            # Ratios only between figures of this run: the machine's speed moves between days.
            ref_mb_s = size_mb / ref_row["seconds"] if ref_row is not None else None
            versus = f"{mb_s / ref_mb_s:.1f}x" if ref_mb_s else "-"
            print(
                f"{stage:<12}{r['seconds']:>9.2f}{r['user_seconds']:>7.2f}{r['system_seconds']:>7.2f}{mb_s:>8.1f}"
                f"{act_s:>8.0f}{r['peak_rss_mb']:>8.0f} MB{share:>13.2f}x{versus:>14}"
            )
            if ref_row is not None:
                print(
                    f"{'  reference':<12}{ref_row['seconds']:>9.2f}{ref_row['user_seconds']:>7.2f}"
                    f"{ref_row['system_seconds']:>7.2f}{ref_mb_s:>8.1f}{activities / ref_row['seconds']:>8.0f}"
                    f"{ref_row['peak_rss_mb']:>8.0f} MB{baseline['seconds'] / ref_row['seconds']:>13.2f}x"
                    + (f"   (stubbed: {', '.join(ref_row['stubbed_modules'])})" if ref_row["stubbed_modules"] else "")
                )
            if r.get("solr_update_s_per_run"):
                docs = sum(int(r.get(k) or 0) for k in ("activities", "transactions", "budgets"))
                print(
                    f"{'  Solr':<12}{r['solr_update_s_per_run']:>9.2f}  s in /update per run: "
                    f"{docs / r['solr_update_s_per_run']:.0f} documents/s inside Solr, "
                    f"{docs / r['seconds']:.0f} documents/s for the stage"
                )
            rows.append(
                {
                    "file": path.name,
                    "mb": round(size_mb, 1),
                    "stage": stage,
                    **r,
                    "mb_s": round(mb_s, 1),
                    "reference": ref_row,
                    "reference_mb_s": round(ref_mb_s, 1) if ref_mb_s else None,
                }
            )
    finally:
        if server is not None:
            server.close()
        if solr is not None:
            solr.stop()
    if reference is not None:
        print_side_by_side(rows, baseline, size_mb)
    return rows


def print_side_by_side(rows: list[dict[str, Any]], baseline: dict[str, Any], size_mb: float) -> None:
    """The stages measured on both sides in this run: ours / reference, and each side's share of
    the bare iterparse measured in the same run (a Markdown table, ready for BENCHMARKS.md)."""
    iterparse_mb_s = size_mb / baseline["seconds"]
    print(f"\nside by side, one run (bare lxml iterparse: {iterparse_mb_s:.1f} MB/s, {baseline['peak_rss_mb']:.0f} MB)")
    print(
        "| stage | this project | reference | ours / reference | share of iterparse (ours / reference) "
        "| peak RSS (ours / reference) |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        ref = row.get("reference")
        if not ref:
            continue
        ours_mb_s, ref_mb_s = size_mb / row["seconds"], size_mb / ref["seconds"]
        print(
            f"| {row['stage']} | {ours_mb_s:.1f} MB/s | {ref_mb_s:.1f} MB/s | **{ours_mb_s / ref_mb_s:.1f}x** "
            f"| {ours_mb_s / iterparse_mb_s:.2f} / {ref_mb_s / iterparse_mb_s:.2f} "
            f"| {row['peak_rss_mb']:.0f} / {ref['peak_rss_mb']:.0f} MB |"
        )


PROFILED = ("clean", "flatten", "lakify", "lakify-shm", "index-docs")


def profile_stage(stage: str, path: Path, top: int = 14) -> None:
    """Where one of our stages spends its time on ``path``: cProfile's functions by own time
    (setup, such as the index stage's flatten and lakify, runs before the profiler starts)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    original = time.perf_counter

    def started() -> float:  # run_stage reads the clock once its setup is done: profile from there
        if not profiler_on[0]:
            profiler_on[0] = True
            profiler.enable()
        return original()

    profiler_on = [False]
    time.perf_counter = started
    try:
        run_stage(stage, str(path), 0)
    finally:
        time.perf_counter = original
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print(f"\nprofile: {stage} on {path.name} ({stats.total_tt:.2f} s under the profiler)")  # type: ignore[attr-defined]
    for line in lines[start:]:
        print("  " + line.replace(str(Path(__file__).resolve().parents[1]) + "/", ""))


def _worker(argv: list[str]) -> int:
    stage, path, activities = argv[1], argv[2], int(argv[3])
    if argv[0] == "--worker":
        print(json.dumps(run_stage(stage, path, activities, json.loads(argv[4]) if len(argv) > 4 else {})))
        return 0
    try:
        print(json.dumps(run_reference_stage(stage, Path(argv[4]), path, activities), default=str))
    except (ReferenceLayoutError, ReferenceRunError) as exc:
        print(json.dumps({"error": str(exc)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--worker"], ["--reference-worker"]):
        return _worker(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_dir", type=Path)
    parser.add_argument("--big", type=Path, help="also bench this (large) file")
    parser.add_argument("--make-big", type=int, metavar="MB", help="build a file of MB megabytes, bench it, delete it")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the fastest is reported")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    parser.add_argument(
        "--reference", type=Path, metavar="CHECKOUT", help="a checkout of IATI/refresher to compare with"
    )
    parser.add_argument("--reference-python", default=sys.executable, help="the Python to run the reference with")
    parser.add_argument("--reference-env", type=Path, help="KEY=VALUE lines the reference's configuration needs")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--profile", action="store_true", help="then profile each of our stages once (cProfile, functions by own time)"
    )
    parser.add_argument(
        "--solr",
        choices=("real", "standin"),
        default="real",
        help="index into a real SolrCloud (solr/runner) or the lean stand-in of bench/e2e.py",
    )
    args = parser.parse_args(argv)
    SOLR_KIND[0] = args.solr
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages: {', '.join(unknown)}")
    if "iterparse" not in stages:
        stages.insert(0, "iterparse")
    reference = None
    if args.reference is not None:
        try:
            src = reference_src(args.reference)
        except ReferenceLayoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        env = load_env_file(args.reference_env) if args.reference_env else {}
        reference = {"src": src, "python": args.reference_python, "env": env}
    files = sorted((args.corpus_dir / "derived").glob("*.xml"))
    if args.big:
        files.append(args.big)
    made_dir = None
    rows: list[dict[str, Any]] = []
    try:
        if args.make_big:
            made_dir = Path(tempfile.mkdtemp(prefix="iati-big-"))
            made = made_dir / f"big-{args.make_big}mb.xml"
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("make_big_file.py")),
                    str(args.corpus_dir),
                    "--size-mb",
                    str(args.make_big),
                    "--out",
                    str(made),
                ],
                check=True,
            )
            files.append(made)
        if not files:
            print(f"no files to bench under {args.corpus_dir}/derived", file=sys.stderr)
            return 2
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {args.repeat} runs per stage"
            + (f"; reference from {reference['src']}" if reference else "")
        )
        for path in files:
            rows += bench_file(path, args.repeat, stages, reference)
        if args.profile:
            for path in files:
                for stage in (s for s in stages if s in PROFILED):
                    profile_stage(stage, path)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
