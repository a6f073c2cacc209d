"""End-to-end benchmark: the real ``iati_refresh`` DAG through Airflow on a generated registry.

Usage::

    python bench/e2e.py [--datasets 200 --publishers 20 --activities 5000]
                        [--scenarios first,idle,unchanged,changed] [--change-share 0.01]
                        [--work DIR] [--keep] [--blob azurite|local] [--json PATH]
                        [--executor dag-test|celery]

What runs: a synthetic registry from ``bench/make_corpus.py`` served on loopback as a Bulk
Data Service; the IATI Validator stand-in and a lean Solr stand-in (below), each in its own
process; real PostgreSQL (a throw-away database on 127.0.0.1:5432) and Azurite (or a local
blob directory); Airflow with a throw-away ``AIRFLOW_HOME`` (SQLite metadata), the DAG run
with ``dag.test()`` as ``make run`` does.  One warm-up run on an empty registry pays
Airflow's one-time start-up first; it is not counted.

``--executor celery`` runs the same scenarios on a real deployment instead
(:class:`iati_refresher.local.stack.AirflowStack`): API server, scheduler, DAG processor,
triggerer and two Celery workers (prefork, concurrency 2, one worker process per CPU-bound
batch), Redis as the broker, PostgreSQL as the metadata database; runs are triggered through
the REST API.  Stage times then come from the batches' own telemetry, CPU seconds from the
whole machine (minus the stand-ins), and worker peaks from every stage worker process.

Scenarios (in this order, on the same state):

* ``first``: first load of the whole registry;
* ``idle``: a re-run with the registry index unchanged (its ETag answers 304);
* ``unchanged``: a re-run after the registry index was regenerated with no dataset changed
  (every dataset is compared, nothing is processed);
* ``changed``: a re-run after ``--change-share`` of the datasets were republished with new
  content; reports when each became searchable (its ``solrize_end``, checked in Solr).

Reported per scenario: wall time; per stage the documents, activities and bytes, the time
in stage code (the task bodies), the task instances' own time in Airflow, documents/s and
activities/s; the share of wall time spent outside task bodies (Airflow scheduling and task
start-up); peak RSS of the stage worker processes and of the task process; CPU seconds of
every process involved, including the stand-ins.  Results go to ``--json`` (default
``WORK/results-<scenario>.json``) and are printed as tables.

The Solr stand-in is pure Python: it checks every document against the project's Solr
schema (the same checks as ``tests/standins/solr_server.py``) but keeps only ``id`` and the
two document fields per Solr document, indexed by dataset, so it answers the pipeline's
queries in time proportional to one dataset, not the whole collection.  Its busy time is
reported separately from the index stage's own time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))  # tests.standins / tests.support (the stand-ins)

STAGES = ("download", "validate", "clean", "flatten", "lakify", "index")
SCENARIOS = ("first", "idle", "unchanged", "changed")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DOC_FIELD = "iati_activities_document_id"
HASH_FIELD = "iati_activities_document_hash"
log = logging.getLogger("bench.e2e")


# =======================================================================================
# stand-in processes (``--serve KIND``): one JSON line with the URL, then commands on stdin
# =======================================================================================


def _corpus_registry_class() -> type:
    from iati_refresher.sample.server import FILES_PREFIX, Reply, SampleRegistryServer

    class CorpusRegistry(SampleRegistryServer):
        """The Bulk Data Service indices of a generated corpus; files streamed from disk."""

        def __init__(self, corpus: Path):
            super().__init__("127.0.0.1", 0, load_sample=False)
            self.corpus = corpus
            self.paths: dict[str, tuple[Path, str]] = {}

        def publish(self, index_created: int, *, empty: bool = False) -> int:
            manifest = json.loads((self.corpus / "registry.json").read_text(encoding="utf-8"))
            stamp = dt.datetime.fromtimestamp(index_created, dt.UTC).isoformat(sep=" ")
            orgs = {p["short_name"]: p for p in manifest["publishers"]}
            datasets, paths = [], {}
            for entry in [] if empty else manifest["datasets"]:
                route = f"{FILES_PREFIX}{entry['file']}"
                paths[route] = (self.corpus / "files" / entry["file"], entry["hash"])
                url = f"{self.url}{route}"
                datasets.append(
                    {
                        "id": entry["id"],
                        "short_name": entry["short_name"],
                        "reporting_org_id": orgs[entry["publisher"]]["id"],
                        "reporting_org_short_name": entry["publisher"],
                        "source_url": f"https://{entry['publisher']}.example.org/{entry['file']}",
                        "license_id": "cc-by",
                        "last_update_check": stamp,
                        "last_known_good_dataset": {
                            "downloaded": stamp,
                            "verified_on_server": stamp,
                            "hash": entry["hash"],
                            "hash_excluding_generated_timestamp": entry["hash"],
                            "cached_dataset_url_xml": url,
                            "cached_dataset_xml_url": url,
                            "cached_dataset_url_zip": None,
                        },
                    }
                )
            publishers = (
                []
                if empty
                else [
                    {k: p.get(k) for k in ("id", "short_name", "human_readable_name", "iati_identifier")}
                    for p in manifest["publishers"]
                ]
            )
            self.paths = paths
            self.dataset_index = {
                "index_created": stamp,
                "index_created_unix_timestamp": index_created,
                "datasets": datasets,
            }
            self.reporting_org_index = {
                "index_created": stamp,
                "index_created_unix_timestamp": index_created,
                "reporting_orgs": publishers,
            }
            return len(datasets)

        def record(self, request: Any) -> None:
            pass  # tens of thousands of requests: keep no log

        def handle(self, request: Any) -> Any:
            found = self.paths.get(request.path)
            if found is not None:
                path, hash_ = found
                return Reply(200, path.read_bytes(), {"Content-Type": "application/xml"}, etag=f'"{hash_}"')
            return super().handle(request)

    return CorpusRegistry


def _lean_solr_class() -> type:
    from tests.standins import solr_server as s

    document_query = re.compile(rf'^{DOC_FIELD}:"((?:\\.|[^"\\])*)"(?:\s+AND\s+(?!.*\bOR\b)(?!.*\|\|).*)?$', re.DOTALL)
    kept = ("id", DOC_FIELD, HASH_FIELD)
    _MISSING = object()
    _STRING_CLASSES = {"StrField", "TextField", "SortableTextField"}

    class LeanSolrStandin(s.SolrStandin):
        """The Solr stand-in for big runs: full schema checks, slim storage, dataset index.

        Each added document is checked with the stand-in's :class:`Schema` exactly as the
        test stand-in does, then only ``id`` and the two document fields are stored.
        Queries whose first clause is ``iati_activities_document_id:"X"`` (ANDed with the
        rest) are evaluated on that dataset's documents only.  No fault injection.
        """

        def __init__(self) -> None:
            super().__init__()
            self.by_document: dict[str, dict[str, set[str]]] = {n: defaultdict(set) for n in self.cores}
            self.busy_s = 0.0
            self.added = 0
            self._fields: dict[tuple[int, str], Any] = {}
            self._converted: dict[tuple[str, type, Any], Any] = {}

        def _put(self, name: str, doc: dict[str, Any]) -> None:
            core, index = self.cores[name], self.by_document[name]
            key = str(doc["id"])
            previous = core.get(key)
            if previous is not None:
                index[previous.get(DOC_FIELD)].discard(key)
            slim = {k: doc[k] for k in kept if k in doc}
            core[key] = slim
            index[slim.get(DOC_FIELD)].add(key)

        def _drop(self, name: str, key: str) -> bool:
            previous = self.cores[name].pop(key, None)
            if previous is None:
                return False
            self.by_document[name][previous.get(DOC_FIELD)].discard(key)
            return True

        def _field(self, schema: Any, name: str) -> Any:
            key = (id(schema), name)
            if key not in self._fields:
                self._fields[key] = schema.field(name)
            return self._fields[key]

        def _convert(self, definition: Any, name: str, value: Any, label: str) -> Any:
            """``solr_server._convert``, remembered per (type, value) when it succeeds."""
            if value.__class__ not in (str, int, float):
                return s._convert(definition, name, value, label)
            key = (definition.cls, value.__class__, value)
            converted = self._converted.get(key, _MISSING)
            if converted is _MISSING:
                converted = s._convert(definition, name, value, label)  # raises for a bad value
                if len(self._converted) > 1_000_000:
                    self._converted.clear()
                self._converted[key] = converted
            return converted

        def _check(self, schema: Any, doc: Any) -> dict[str, Any]:
            """``Schema.check`` with the same rules, faster: field lookups and conversions are
            remembered, and a list of strings for a string field is taken as it is (what
            ``_convert`` does to each string)."""
            if not isinstance(doc, dict):
                raise s.SolrRequestError(400, f"Expected a JSON object for a document, got {type(doc).__name__}")
            key = doc.get(schema.unique_key)
            if key in (None, "", []):
                raise s.SolrRequestError(400, f"Document is missing mandatory uniqueKey field: {schema.unique_key}")
            label = key if isinstance(key, str) else json.dumps(key)
            stored: dict[str, Any] = {}
            for name, raw in doc.items():
                definition = self._field(schema, name)
                if definition is None:
                    raise s.SolrRequestError(400, f"ERROR: [doc={label}] unknown field '{name}'")
                values = raw if isinstance(raw, list) else [raw]
                values = [v for v in values if v is not None]
                if not values:
                    continue
                if len(values) > 1 and not definition.multi:
                    raise s.SolrRequestError(
                        400,
                        f"ERROR: [doc={label}] multiple values encountered for non multiValued field {name}: "
                        f"{json.dumps(values)[:200]}",
                    )
                if definition.cls in _STRING_CLASSES and all(v.__class__ is str for v in values):
                    converted = values
                else:
                    converted = [self._convert(definition, name, v, label) for v in values]
                stored[name] = converted if definition.multi else converted[0]
            for definition in schema.fields.values():
                if definition.name not in stored and definition.default is not None:
                    value = s._now() if definition.default == "NOW" else definition.default
                    stored[definition.name] = [value] if definition.multi else value
                if definition.required and definition.name not in stored:
                    raise s.SolrRequestError(400, f"[doc={label}] missing required field: {definition.name}")
            return stored

        def _candidates(self, name: str, q: str) -> list[str]:
            match = document_query.match(q.strip())
            if match:
                return sorted(self.by_document[name].get(s._unescape(match.group(1)), ()))
            return sorted(self.cores[name])

        def handle_update(self, collection: str, params: dict[str, str], body: bytes) -> dict[str, Any]:
            started = time.perf_counter()
            name = self.resolve(collection)
            schema = self.schemas[name]
            try:
                if body.lstrip()[:1] == b"[":
                    # The usual add request, a JSON array of documents: parsed straight into dicts.
                    commands: list[tuple[str, Any]] = [("add", doc) for doc in json.loads(body)]
                else:
                    commands = s._commands(json.loads(body or b"{}", object_pairs_hook=lambda pairs: pairs))
            except ValueError as exc:
                raise s.SolrRequestError(400, f"Cannot parse provided JSON: {exc}") from exc
            try:
                with self._lock:
                    self.update_requests += 1
                    for command, value in commands:
                        if command == "add":
                            doc = value if isinstance(value, dict) else s._to_dict(value)
                            self._put(name, self._check(schema, doc))
                            self.added += 1
                        elif command == "delete_id":
                            self._drop(name, str(value))
                        elif command == "delete_query":
                            matcher = s.parse_query(str(value))
                            core = self.cores[name]
                            for key in [k for k in self._candidates(name, str(value)) if matcher(core[k])]:
                                self._drop(name, key)
            finally:
                self.busy_s += time.perf_counter() - started
            return {"responseHeader": {"status": 0, "QTime": 0}}

        def handle_select(self, collection: str, params: dict[str, list[str]]) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                name = self.resolve(collection)
                schema = self.schemas[name]
                first = {k: v[-1] for k, v in params.items()}
                q = first.get("q") or "*:*"
                matchers = [s.parse_query(q)] + [s.parse_query(fq) for fq in params.get("fq", [])]
                rows, start = int(first.get("rows", 10)), int(first.get("start", 0))
                if (first.get("sort") or "id asc").strip() != "id asc":
                    raise s.SolrRequestError(400, "lean stand-in: only sort=id asc")
                cursor = first.get("cursorMark")
                with self._lock:
                    core = self.cores[name]
                    hits = [dict(core[k]) for k in self._candidates(name, q) if all(m(core[k]) for m in matchers)]
                answer: dict[str, Any] = {"responseHeader": {"status": 0, "QTime": 0}}
                found = len(hits)
                if cursor is not None:
                    if cursor != "*":
                        last = s._decode_cursor(cursor)
                        hits = [h for h in hits if h["id"] > last]
                    page = hits[:rows]
                    answer["nextCursorMark"] = s._encode_cursor(page[-1]["id"]) if page else cursor
                else:
                    page = hits[start : start + rows]
                fl = s._field_list(first.get("fl"))
                answer["response"] = {
                    "numFound": found,
                    "start": start,
                    "numFoundExact": True,
                    "docs": [s._project(doc, fl, schema) for doc in page],
                }
                return answer
            finally:
                self.busy_s += time.perf_counter() - started

        def stats(self) -> dict[str, Any]:
            with self._lock:
                return {
                    "busy_s": round(self.busy_s, 3),
                    "added": self.added,
                    "requests": self.requests,
                    "documents": {n: len(c) for n, c in self.cores.items()},
                }

    return LeanSolrStandin


def serve(kind: str, corpus: Path | None) -> int:
    """Run one stand-in until stdin closes; answer one JSON line per command line."""
    logging.disable(logging.CRITICAL)
    if kind == "registry":
        server = _corpus_registry_class()(corpus).start()
        print(json.dumps({"url": server.url}), flush=True)
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "publish":
                count = server.publish(int(rest[0]), empty=rest[1:] == ["empty"])
                print(json.dumps({"datasets": count}), flush=True)
            else:
                print(json.dumps({}), flush=True)
        server.stop()
    elif kind == "validator":
        from tests.standins import validator_server

        # The stand-in answers headers and body in two writes; without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every request (the real API
        # does not), which would make the validate stage look 10x slower than it is.
        accept = validator_server._Server.get_request

        def get_request(server: Any) -> Any:
            sock, address = accept(server)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, address

        validator_server._Server.get_request = get_request  # type: ignore[method-assign]
        validator = validator_server.ValidatorStandin().start()
        print(json.dumps({"url": validator.url, "key_name": validator.key_name, "key": validator.key}), flush=True)
        for _line in sys.stdin:
            print(json.dumps({"requests": len(validator.requests)}), flush=True)
        validator.stop()
    elif kind == "solr":
        solr = _lean_solr_class()().start()
        print(json.dumps({"url": solr.base_url}), flush=True)
        for _line in sys.stdin:
            print(json.dumps(solr.stats()), flush=True)
        solr.stop()
    else:
        raise SystemExit(f"unknown stand-in {kind}")
    return 0


class StandIn:
    """A stand-in running as a child process (see :func:`serve`)."""

    def __init__(self, kind: str, corpus: Path | None = None):
        args = [sys.executable, str(Path(__file__).resolve()), "--serve", kind]
        if corpus is not None:
            args += ["--corpus", str(corpus)]
        self.kind = kind
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = json.loads(self._read())

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} stand-in exited with {self.proc.wait()}")
        return line

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# =======================================================================================
# measuring processes: /proc sampling
# =======================================================================================


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    stat = _proc_stat(pid)
    return stat[1] if stat else 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux: writing 5 to clear_refs), so a peak is per scenario."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


class WorkerSampler(threading.Thread):
    """Samples this process's descendants (the stage worker processes) every ``interval`` seconds.

    Records each process's peak RSS (VmHWM) and kind (``worker`` for the stage worker
    processes of :mod:`iati_refresher.worker_pool`); stand-ins and Azurite are excluded by pid.
    """

    def __init__(self, exclude: set[int], interval: float = 0.2, *, everywhere: bool = False):
        super().__init__(name="rss-sampler", daemon=True)
        self.everywhere = everywhere  # every stage worker process of the machine (Celery workers' too)
        self.root = os.getpid()
        self.exclude = exclude
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _proc_stat(int(name))
                if stat is not None:
                    parents[int(name)] = stat[0]
        for pid in parents:
            if self.everywhere:
                if pid not in self.exclude and "iati_refresher.worker_pool" in _cmdline(pid):
                    hwm = _status_kb(pid, "VmHWM:")
                    with self._lock:
                        self.peaks[pid] = ("worker", max(self.peaks.get(pid, ("", 0))[1], hwm))
                continue
            chain, p = [], pid
            while p in parents and p != self.root and p not in self.exclude and len(chain) < 50:
                chain.append(p)
                p = parents[p]
            if p != self.root or pid == self.root:
                continue
            hwm = _status_kb(pid, "VmHWM:")
            with self._lock:
                kind, peak = self.peaks.get(pid, ("", 0))
                if not kind:
                    command = _cmdline(pid)
                    kind = (
                        "worker"
                        if "iati_refresher.worker_pool" in command
                        else "resource_tracker"
                        if "resource_tracker" in command
                        else "other"
                    )
                self.peaks[pid] = (kind, max(peak, hwm))

    def take(self) -> dict[str, Any]:
        """Peaks since the last call: the highest worker RSS, and how many workers were seen."""
        self.sample()
        with self._lock:
            peaks, self.peaks = self.peaks, {}
        workers = [kb for kind, kb in peaks.values() if kind == "worker"]
        return {
            "workers_seen": len(workers),
            "worker_peak_rss_mb": round(max(workers, default=0) / 1024, 1),
            "other_children_peak_rss_mb": round(
                max((kb for k, kb in peaks.values() if k == "other"), default=0) / 1024, 1
            ),
        }

    def stop(self) -> None:
        self._stop.set()


# =======================================================================================
# timing the task bodies (dag.test runs every task in this process)
# =======================================================================================


@contextlib.contextmanager
def idle_polls() -> Iterator[dict[str, float]]:
    """Count the seconds ``dag.test()`` sleeps between polls when no task is ready.

    Its loop sleeps 1 s whenever every remaining task waits on a dependency its last pass
    did not see finish (mostly after each mapped stage): a property of ``dag.test``, not of
    the scheduler, so it is reported apart from the rest of Airflow's time.
    """
    counted = {"seconds": 0.0}
    original = time.sleep

    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_globals.get("__name__") == "airflow.sdk.definitions.dag":
            counted["seconds"] += seconds
        original(seconds)

    time.sleep = sleep  # type: ignore[assignment]
    try:
        yield counted
    finally:
        time.sleep = original  # type: ignore[assignment]


class BodyTimer:
    """Wraps the pipeline functions the DAG's tasks call and records how long each call took."""

    WRAPPED = (
        "migrate_database",
        "sync_registry",
        "safety_check",
        "plan_batches",
        "run_batch",
        "summarise_run",
    )

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._originals: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        from iati_refresher import pipeline

        for name in self.WRAPPED:
            original = getattr(pipeline, name)
            self._originals[name] = original
            setattr(pipeline, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stage = None
            if name == "plan_batches":
                stage = args[0] if args else kwargs.get("stage")
            elif name == "run_batch":
                stage = (args[0] if args else kwargs["batch"])["stage"]
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append({"name": name, "stage": stage, "seconds": time.perf_counter() - started})

        return timed

    def take(self) -> list[dict[str, Any]]:
        calls, self.calls = self.calls, []
        return calls


# =======================================================================================
# the benchmark
# =======================================================================================


class SearchableWatcher(threading.Thread):
    """While a run goes, asks Solr (the read alias, as datastore-search does) once a second
    whether each changed dataset's new version is searchable yet; records when it first was."""

    def __init__(self, solr_url: str, ids: list[str], started: float):
        super().__init__(name="searchable-watcher", daemon=True)
        self.solr_url, self.ids, self.started = solr_url, ids, started
        self.first_seen: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        import httpx

        from iati_refresher.db.connection import connect, resolve_conninfo

        with contextlib.closing(connect(resolve_conninfo())) as conn, httpx.Client(timeout=30) as http:
            while not self._halt.wait(1.0):
                waiting = [i for i in self.ids if i not in self.first_seen]
                if not waiting:
                    return
                hashes = {
                    r["id"]: r["hash"]
                    for r in conn.execute("SELECT id, hash FROM document WHERE id = ANY(%s)", (waiting,)).fetchall()
                }
                conn.rollback()
                for doc_id, hash_ in hashes.items():
                    q = f'{DOC_FIELD}:"{doc_id}" AND {HASH_FIELD}:"{hash_}"'
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        answer = http.post(f"{self.solr_url}/activity/select", data={"q": q, "rows": 0, "wt": "json"})
                        if answer.json()["response"]["numFound"] > 0:
                            self.first_seen[doc_id] = time.perf_counter() - self.started

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join(30)
        seconds = sorted(self.first_seen.values())
        return {
            "changed": len(self.ids),
            "seen_by_a_query": len(seconds),
            "median_s": round(seconds[len(seconds) // 2], 1) if seconds else None,
            "max_s": round(seconds[-1], 1) if seconds else None,
        }


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work: Path = args.work
        self.corpus = self.work / "corpus"
        self.standins: dict[str, StandIn] = {}
        self.azurite: Any = None
        self.dbname = ""
        self.index_created = 1_800_000_000
        self.results: dict[str, Any] = {}
        self.stack: Any = None
        self.metadata_db = ""
        self.solr_cloud: Any = None

    # --- set-up -----------------------------------------------------------------------------

    def make_corpus(self) -> dict[str, Any]:
        manifest_path = self.corpus / "registry.json"
        wanted = {
            "datasets": self.args.datasets,
            "publishers": self.args.publishers,
            "activities": self.args.activities,
            "seed": self.args.seed,
        }
        if manifest_path.exists():
            generator = json.loads(manifest_path.read_text(encoding="utf-8"))["generator"]
            if all(generator.get(k) == v for k, v in wanted.items()) and not generator.get("changes"):
                print(f"corpus: reusing {self.corpus}", flush=True)
                return self._corpus_summary()
            shutil.rmtree(self.corpus)
        print(
            f"corpus: generating {self.args.datasets} datasets / {self.args.activities} activities "
            f"in {self.corpus} ...",
            flush=True,
        )
        command = [
            sys.executable,
            str(PROJECT / "bench" / "make_corpus.py"),
            str(self.corpus),
            "--datasets",
            str(self.args.datasets),
            "--publishers",
            str(self.args.publishers),
            "--activities",
            str(self.args.activities),
            "--seed",
            str(self.args.seed),
        ]
        if self.args.templates:
            command += ["--templates", str(self.args.templates)]
        started = time.monotonic()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        print(f"corpus: generated in {time.monotonic() - started:.0f} s", flush=True)
        return self._corpus_summary()

    def _corpus_summary(self) -> dict[str, Any]:
        sys.path.insert(0, str(PROJECT / "bench"))
        import make_corpus

        return make_corpus.summary(make_corpus.read_manifest(self.corpus))

    def configure_environment(self) -> None:
        """Everything Airflow and the pipeline read from the environment (before Airflow is imported)."""
        home = self.work / "airflow-home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": self.args.airflow_log_level,
            "REFRESHER_ALLOW_PRIVATE_ADDRESSES": "true",  # every stand-in listens on loopback
            "REFRESHER_SAFETY_CHECK_PERIOD_S": str(self.args.safety_period_s),
        }
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        for key in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]:
            del os.environ[key]
        os.environ.update(env)

    def clean_stale_services(self) -> None:
        """Stop what a killed earlier run left behind (its stand-ins, Azurite, database).

        Only processes recorded in ``WORK/services.json`` whose command line is still the
        recorded one are stopped.
        """
        from tests.support import services

        record = self.work / "services.json"
        if not record.exists():
            return
        stale = json.loads(record.read_text(encoding="utf-8"))
        for pid, command in stale.get("processes", {}).items():
            if _cmdline(int(pid)).strip() == command.strip():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        if stale.get("azurite_dir"):
            shutil.rmtree(stale["azurite_dir"], ignore_errors=True)
        if stale.get("dbname"):
            with contextlib.suppress(Exception):
                services.drop_database(stale["dbname"])
        record.unlink()
        print(f"cleaned up after an earlier run that did not finish: {stale}", flush=True)

    def record_services(self) -> None:
        processes = {str(pid): _cmdline(pid) for pid in self.service_pids().values()}
        record = {
            "processes": processes,
            "dbname": self.dbname,
            "azurite_dir": self.azurite.location if self.azurite is not None else None,
        }
        (self.work / "services.json").write_text(json.dumps(record, indent=1), encoding="utf-8")

    def start_services(self) -> None:
        from tests.support import services

        self.clean_stale_services()
        self.dbname = f"iati_bench_{os.getpid()}"
        services.drop_database(self.dbname)
        with contextlib.closing(services._admin()) as admin:
            admin.execute(f'CREATE DATABASE "{self.dbname}"')
        os.environ["AIRFLOW_CONN_REFRESHER_DB"] = services.airflow_uri(self.dbname)
        if self.args.blob in ("azurite", "azurite-memory"):
            # On disk Azurite rewrites one metadata document holding every blob as the store
            # grows (~200,000 lake blobs at 100,000 activities); in memory it holds every blob
            # in its own process (several GB at that size). Azure has neither cost.
            self.azurite = services.Azurite(in_memory=self.args.blob == "azurite-memory").start()
            os.environ["AIRFLOW_CONN_REFRESHER_BLOB"] = json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": self.azurite.connection_string}}
            )
        else:
            blobs = self.work / "blobs"
            shutil.rmtree(blobs, ignore_errors=True)
            os.environ["REFRESHER_LOCAL_BLOB_DIR"] = str(blobs)
            os.environ["REFRESHER_EMBEDDED"] = "true"  # a local blob directory on purpose
        self.standins["registry"] = StandIn("registry", self.corpus)
        self.standins["validator"] = StandIn("validator")
        if self.args.solr == "real":
            from iati_refresher.local.solr import LocalSolrCloud

            started = time.monotonic()
            self.solr_cloud = LocalSolrCloud(heap_mb=self.args.solr_heap_mb, base_dir=self.work / "solrcloud")
            shutil.rmtree(self.work / "solrcloud", ignore_errors=True)
            (self.work / "solrcloud").mkdir(parents=True)
            self.solr_cloud.start()
            print(f"SolrCloud (solr/runner) at {self.solr_cloud.url} in {time.monotonic() - started:.0f} s", flush=True)
            solr_url = self.solr_cloud.url
        else:
            self.standins["solr"] = StandIn("solr")
            solr_url = self.standins["solr"].info["url"]
        os.environ["AIRFLOW_CONN_IATI_REGISTRY"] = self.standins["registry"].info["url"]
        validator = self.standins["validator"].info
        os.environ["AIRFLOW_CONN_IATI_VALIDATOR"] = json.dumps(
            {
                "conn_type": "iati_validator",
                "host": validator["url"],
                "extra": {"key_name": validator["key_name"], "key": validator["key"]},
            }
        )
        os.environ["AIRFLOW_CONN_SOLR"] = json.dumps({"conn_type": "iati_solr", "host": solr_url})
        self.record_services()

    def stop_services(self) -> None:
        from tests.support import services

        for standin in self.standins.values():
            standin.stop()
        if self.solr_cloud is not None:
            self.solr_cloud.stop()
        if self.azurite is not None:
            self.azurite.stop()
        if self.dbname and not self.args.keep:
            with contextlib.suppress(Exception):
                services.drop_database(self.dbname)
        if self.metadata_db:
            with contextlib.suppress(Exception):
                services.drop_database(self.metadata_db)
        with contextlib.suppress(OSError):
            (self.work / "services.json").unlink()

    def service_pids(self) -> dict[str, int]:
        pids = {name: s.pid for name, s in self.standins.items()}
        if self.solr_cloud is not None and self.solr_cloud.proc is not None:
            pids["solr"] = self.solr_cloud.proc.pid
        if self.azurite is not None and self.azurite.proc is not None:
            pids["azurite"] = self.azurite.proc.pid
        return pids

    def _watch(self, changed_ids: list[str] | None, started: float) -> SearchableWatcher | None:
        if not changed_ids:
            return None
        watcher = SearchableWatcher(json.loads(os.environ["AIRFLOW_CONN_SOLR"])["host"], changed_ids, started)
        watcher.start()
        return watcher

    def _watched(self, watcher: SearchableWatcher | None, wall: float) -> dict[str, Any] | None:
        """The watcher's figures; it keeps asking up to 30 s after the run (commitWithin)."""
        if watcher is None:
            return None
        deadline = time.monotonic() + 30
        while len(watcher.first_seen) < len(watcher.ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        return {**watcher.stop(), "run_wall_s": round(wall, 1)}

    def solr_stats(self) -> dict[str, float]:
        """Solr's busy time and document count: the stand-in's own, or real Solr's metrics (the
        update handler's request time, summed over the three collections' cores)."""
        if self.solr_cloud is None:
            return self.standins["solr"].ask("stats")
        return real_solr_stats(self.solr_cloud.url)

    def load_dag(self) -> Any:
        for name in (
            "airflow",
            "airflow.task",
            "airflow.sdk",
            "airflow.models",
            "sqlalchemy",
            "httpx",
            "iati_refresher",
            "alembic",
        ):
            logging.getLogger(name).setLevel(getattr(logging, self.args.airflow_log_level))
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        from iati_refresher.airflow_setup import ensure_pools

        db.resetdb()
        ensure_pools()
        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        if bag.import_errors:
            raise SystemExit(f"DAG import errors: {bag.import_errors}")
        return bag.dags["iati_refresh"]

    # --- the Celery deployment ----------------------------------------------------------------------

    def start_stack(self) -> None:
        from iati_refresher.local.stack import AirflowStack
        from tests.support import services

        self.metadata_db = services.create_database()
        env = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("AIRFLOW_CONN_", "REFRESHER_")) and not k.startswith("REFRESHER_TEST_")
        }
        env.update(
            {
                "REFRESHER_REFRESH_SCHEDULE": "none",
                "REFRESHER_AIRFLOW_WORKERS": "2",
                "REFRESHER_CPU_SLOTS_PER_WORKER": "2",
                "REFRESHER_LOCAL_BLOB_DIR_SHARED": "true",
            }
        )
        self.stack = AirflowStack(
            home=self.work / "airflow-celery",
            metadata_uri=services.airflow_uri(self.metadata_db, driver="postgresql+psycopg"),
            executor="CeleryExecutor",
            broker_url=services.redis_url(),
            api_port=services.free_port(),
            workers=2,
            worker_concurrency=2,
            worker_pool="prefork",
            environment=env,
            parallelism=16,
        )
        started = time.monotonic()
        self.stack.start()
        print(f"celery stack healthy in {time.monotonic() - started:.0f} s (logs in {self.stack.log_dir})", flush=True)

    def run_celery(self, name: str, sampler: WorkerSampler, changed_ids: list[str] | None = None) -> dict[str, Any]:
        from iati_refresher.db.connection import connect, resolve_conninfo

        pids = self.service_pids()
        cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
        machine_before = machine_busy_seconds()
        solr_before = self.solr_stats()
        sampler.take()
        started_utc = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        load_before = os.getloadavg()[0]
        print(f"\n=== {name}: running iati_refresh on Celery ...", flush=True)
        started = time.perf_counter()
        watcher = self._watch(changed_ids, started)
        run_id = self.stack.trigger("iati_refresh")
        state = self.stack.wait_for_run("iati_refresh", run_id, timeout_s=6 * 3600)
        wall = time.perf_counter() - started
        searchable_by_query = self._watched(watcher, wall)
        tis = self.stack.task_instances("iati_refresh", run_id)
        rss = sampler.take()
        solr_after = self.solr_stats()
        cpu = {n: round(cpu_seconds(p) - cpu_before[n], 1) for n, p in pids.items()}
        cpu["machine_total"] = round(machine_busy_seconds() - machine_before, 1)
        cpu["airflow_and_stages"] = round(
            cpu["machine_total"] - sum(v for k, v in cpu.items() if k != "machine_total"), 1
        )
        result: dict[str, Any] = {
            "scenario": name,
            "state": state,
            "wall_s": round(wall, 2),
            "dag_test_idle_polls_s": 0.0,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "task_process_peak_rss_mb": 0.0,
            **rss,
            "cpu_s": cpu,
            "solr_busy_s": round(solr_after["busy_s"] - solr_before["busy_s"], 2),
            "solr_documents": solr_after["documents"],
            "airflow": _airflow_times_from_api(tis),
            "workers_used": sorted({t["hostname"] for t in tis if t.get("hostname")}),
        }
        with contextlib.closing(connect(resolve_conninfo())) as conn:
            telemetry = conn.execute(
                """SELECT stage, count(*) AS batches, sum(documents_in) AS docs, sum(documents_ok) AS ok,
                          sum(documents_skipped) AS skipped, sum(documents_failed) AS failed,
                          sum(activities) AS activities, sum(bytes) AS bytes,
                          sum(extract(epoch FROM finished_at - started_at)) AS body_s
                     FROM run_stage_telemetry WHERE run_id = %s GROUP BY stage""",
                (run_id,),
            ).fetchall()
            if changed_ids:
                result["searchable"] = self._searchable(conn, changed_ids, started_utc)
            result["state_counts"] = {
                r["state"]: r["n"]
                for r in conn.execute(
                    """SELECT CASE WHEN solrize_end IS NOT NULL THEN 'indexed'
                              WHEN lakify_end IS NOT NULL THEN 'lakified'
                              WHEN clean_end IS NOT NULL THEN 'cleaned' WHEN validation IS NOT NULL THEN 'validated'
                              WHEN downloaded IS NOT NULL THEN 'downloaded' ELSE 'not downloaded' END AS state,
                          count(*) AS n FROM document GROUP BY 1"""
                ).fetchall()
            }
            result["non_ok_codes"] = [
                dict(r)
                for r in conn.execute(
                    """SELECT stage, outcome, code, count(*) AS n FROM document_stage WHERE run_id = %s
                     AND outcome <> 'ok' GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC""",
                    (run_id,),
                ).fetchall()
            ]
        if searchable_by_query is not None:
            result["searchable_by_query"] = searchable_by_query
        calls = [{"name": "run_batch", "stage": t["stage"], "seconds": float(t["body_s"] or 0)} for t in telemetry]
        result["stages"] = self._stage_rows(calls, telemetry, result["airflow"])
        bodies = sum(c["seconds"] for c in calls)
        result["task_bodies_s"] = round(bodies, 2)  # summed over parallel batches: may exceed the wall time
        result["outside_task_bodies_s"] = round(max(0.0, wall - bodies), 2)
        result["airflow_share"] = round(max(0.0, wall - bodies) / wall, 3) if wall else 0.0
        result["other_bodies_s"] = {}
        return result

    # --- one scenario ----------------------------------------------------------------------------

    def publish(self, *, empty: bool = False) -> None:
        self.index_created += 60
        answer = self.standins["registry"].ask(f"publish {self.index_created}{' empty' if empty else ''}")
        print(f"registry: {answer['datasets']} datasets listed (index {self.index_created})", flush=True)

    def run(
        self, dag: Any, name: str, timer: BodyTimer, sampler: WorkerSampler, changed_ids: list[str] | None = None
    ) -> dict[str, Any]:
        from iati_refresher.db.connection import connect, resolve_conninfo

        pids = self.service_pids()
        cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
        own_before = os.times()
        machine_before = machine_busy_seconds()
        solr_before = self.solr_stats()
        timer.take()
        sampler.take()
        reset_peak_rss()
        started_utc = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        print(f"\n=== {name}: running iati_refresh ...", flush=True)
        watcher = self._watch(changed_ids, started)
        with idle_polls() as polls:
            dag_run = dag.test()
        wall = time.perf_counter() - started
        searchable_by_query = self._watched(watcher, wall)
        calls = timer.take()
        own_after = os.times()
        rss = sampler.take()
        result: dict[str, Any] = {
            "scenario": name,
            "state": str(dag_run.state),
            "wall_s": round(wall, 2),
            "dag_test_idle_polls_s": round(polls["seconds"], 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "task_process_peak_rss_mb": round(_status_kb(os.getpid(), "VmHWM:") / 1024, 1),
            **rss,
        }
        solr_after = self.solr_stats()
        cpu = {n: round(cpu_seconds(p) - cpu_before[n], 1) for n, p in pids.items()}
        cpu["task_process"] = round(own_after.user + own_after.system - own_before.user - own_before.system, 1)
        cpu["stage_workers"] = round(
            own_after.children_user + own_after.children_system - own_before.children_user - own_before.children_system,
            1,
        )
        cpu["machine_total"] = round(machine_busy_seconds() - machine_before, 1)
        result["cpu_s"] = cpu
        result["solr_busy_s"] = round(solr_after["busy_s"] - solr_before["busy_s"], 2)
        result["solr_documents"] = solr_after["documents"]
        result["airflow"] = self._airflow_times(dag_run)
        with contextlib.closing(connect(resolve_conninfo())) as conn:
            telemetry = conn.execute(
                """SELECT stage, count(*) AS batches, sum(documents_in) AS docs, sum(documents_ok) AS ok,
                          sum(documents_skipped) AS skipped, sum(documents_failed) AS failed,
                          sum(activities) AS activities, sum(bytes) AS bytes
                     FROM run_stage_telemetry WHERE run_id = %s GROUP BY stage""",
                (dag_run.run_id,),
            ).fetchall()
            codes = conn.execute(
                """SELECT stage, outcome, code, count(*) AS n FROM document_stage WHERE run_id = %s
                     AND outcome <> 'ok' GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC""",
                (dag_run.run_id,),
            ).fetchall()
            if changed_ids:
                result["searchable"] = self._searchable(conn, changed_ids, started_utc)
            result["state_counts"] = {
                r["state"]: r["n"]
                for r in conn.execute(
                    """SELECT CASE WHEN solrize_end IS NOT NULL THEN 'indexed'
                              WHEN lakify_end IS NOT NULL THEN 'lakified'
                              WHEN clean_end IS NOT NULL THEN 'cleaned' WHEN validation IS NOT NULL THEN 'validated'
                              WHEN downloaded IS NOT NULL THEN 'downloaded' ELSE 'not downloaded' END AS state,
                          count(*) AS n FROM document GROUP BY 1"""
                ).fetchall()
            }
        result["stages"] = self._stage_rows(calls, telemetry, result["airflow"])
        result["non_ok_codes"] = [dict(r) for r in codes]
        if searchable_by_query is not None:
            result["searchable_by_query"] = searchable_by_query
        bodies = sum(c["seconds"] for c in calls)
        result["task_bodies_s"] = round(bodies, 2)
        result["outside_task_bodies_s"] = round(wall - bodies, 2)
        result["airflow_share"] = round((wall - bodies) / wall, 3) if wall else 0.0
        result["other_bodies_s"] = {
            name: round(sum(c["seconds"] for c in calls if c["name"] == name), 2)
            for name in ("migrate_database", "sync_registry", "safety_check", "summarise_run")
        }
        return result

    def _airflow_times(self, dag_run: Any) -> dict[str, Any]:
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            tis = (
                session.query(TaskInstance)
                .filter(TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
                .all()
            )
            rows = [(ti.task_id, ti.map_index, ti.start_date, ti.end_date, str(ti.state)) for ti in tis]
        return _task_times(rows)

    @staticmethod
    def _stage_rows(
        calls: list[dict[str, Any]], telemetry: list[dict[str, Any]], airflow: dict[str, Any]
    ) -> list[dict[str, Any]]:
        by_stage = {r["stage"]: r for r in telemetry}
        rows = []
        for stage in STAGES:
            t = by_stage.get(stage) or {}
            body = sum(c["seconds"] for c in calls if c["name"] == "run_batch" and c["stage"] == stage)
            plan = sum(c["seconds"] for c in calls if c["name"] == "plan_batches" and c["stage"] == stage)
            tasks = airflow["tasks"]
            docs = int(t.get("docs") or 0)
            activities = int(t.get("activities") or 0)
            rows.append(
                {
                    "stage": stage,
                    "batches": int(t.get("batches") or 0),
                    "documents": docs,
                    "ok": int(t.get("ok") or 0),
                    "skipped": int(t.get("skipped") or 0),
                    "failed": int(t.get("failed") or 0),
                    "activities": activities,
                    "mb": round(int(t.get("bytes") or 0) / 1e6, 1),
                    "body_s": round(body, 2),
                    "plan_s": round(plan, 2),
                    "task_instances_s": round(
                        tasks.get(stage, {}).get("seconds", 0.0) + tasks.get(f"plan_{stage}", {}).get("seconds", 0.0), 2
                    ),
                    "span_s": round(
                        tasks.get(stage, {}).get("span_s", 0.0) + tasks.get(f"plan_{stage}", {}).get("span_s", 0.0), 2
                    ),
                    "docs_per_s": round(docs / body, 1) if body else 0.0,
                    "activities_per_s": round(activities / body, 1) if body else 0.0,
                }
            )
        return rows

    @staticmethod
    def _searchable(conn: Any, ids: list[str], started: dt.datetime) -> dict[str, Any]:
        """When each changed dataset's new version was in Solr (and a check that it is)."""
        import httpx

        rows = conn.execute(
            """SELECT id, hash, solrize_end, solr_indexed_hash, solr_activity_count, activity_count
                 FROM document WHERE id = ANY(%s)""",
            (ids,),
        ).fetchall()
        solr = json.loads(os.environ["AIRFLOW_CONN_SOLR"])["host"]
        seconds, missing, checked = [], [], 0
        for r in rows:
            if r["solrize_end"] is None or r["solr_indexed_hash"] != r["hash"]:
                missing.append(r["id"])
                continue
            answer = httpx.post(
                f"{solr}/activity_solrize/select",
                data={"q": f'{DOC_FIELD}:"{r["id"]}" AND {HASH_FIELD}:"{r["hash"]}"', "rows": 0, "wt": "json"},
            ).json()
            if answer["response"]["numFound"] == (r["solr_activity_count"] or 0):
                checked += 1
            seconds.append((r["solrize_end"] - started).total_seconds())
        seconds.sort()
        return {
            "changed": len(ids),
            "searchable": len(seconds),
            "not_searchable": missing[:20],
            "checked_in_solr": checked,
            "median_s": round(seconds[len(seconds) // 2], 1) if seconds else None,
            "max_s": round(seconds[-1], 1) if seconds else None,
        }

    # --- the whole run ---------------------------------------------------------------------------

    def main(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        corpus = self.make_corpus()
        self.configure_environment()
        sampler = None
        try:
            self.start_services()
            celery = self.args.executor == "celery"
            if celery:
                self.start_stack()
                run = self.run_celery
                sampler = WorkerSampler(exclude=set(self.service_pids().values()), everywhere=True)
            else:
                dag = self.load_dag()
                timer = BodyTimer()
                timer.install()
                sampler = WorkerSampler(exclude=set(self.service_pids().values()))

                def run(name: str, sampler: WorkerSampler, changed: list[str] | None = None) -> dict[str, Any]:
                    return self.run(dag, name, timer, sampler, changed)

            sampler.start()
            machine = {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            }
            self.results = {
                "corpus": corpus,
                "machine": machine,
                "blob": self.args.blob,
                "executor": self.args.executor,
                "scenarios": [],
            }
            # Warm-up: Airflow's in-process execution API starts on the first task (~10 s, once);
            # on Celery, the workers import the DAG and the package once.
            self.publish(empty=True)
            warm = run("warm-up (empty registry, not counted)", sampler)
            print(f"warm-up: {warm['wall_s']} s", flush=True)
            for scenario in self.args.scenarios:
                changed = None
                if scenario in ("first", "unchanged"):
                    self.publish()
                elif scenario == "changed":
                    changed = self.change()
                    self.publish()
                result = run(scenario, sampler, changed)
                self.results["scenarios"].append(result)
                print_scenario(result)
                self.save()
        finally:
            if sampler is not None:
                sampler.stop()
            if self.stack is not None:
                self.stack.stop()
            self.stop_services()
        return 0

    def change(self) -> list[str]:
        sys.path.insert(0, str(PROJECT / "bench"))
        import make_corpus

        started = time.monotonic()
        ids = make_corpus.change(self.corpus, self.args.change_share, templates_dir=self.args.templates)
        print(f"corpus: {len(ids)} datasets republished in {time.monotonic() - started:.0f} s", flush=True)
        return ids

    def save(self) -> None:
        path = self.args.json or (self.work / "results.json")
        path.write_text(json.dumps(self.results, indent=1, default=str), encoding="utf-8")


def real_solr_stats(url: str) -> dict[str, float]:
    """``busy_s``: seconds Solr spent in /update requests (all cores); ``documents``: documents held."""
    import httpx

    metrics = httpx.get(
        f"{url}/admin/metrics", params={"group": "core", "prefix": "UPDATE./update.totalTime", "wt": "json"}, timeout=60
    ).json()
    if "metrics" not in metrics:
        raise RuntimeError(f"Solr's metrics are not available: {metrics.get('error')}")
    busy_ns = 0.0
    for values in metrics["metrics"].values():
        total = values.get("UPDATE./update.totalTime")  # nanoseconds
        if isinstance(total, (int, float)):
            busy_ns += float(total)
    documents = 0
    for role in ("activity", "transaction", "budget"):
        answer = httpx.get(f"{url}/{role}/select", params={"q": "*:*", "rows": 0, "wt": "json"}, timeout=60).json()
        documents += int(answer["response"]["numFound"])
    return {"busy_s": busy_ns / 1e9, "documents": documents}


def _airflow_times_from_api(tis: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: instances, their summed run time and span, from the REST API's task instances."""
    rows = [
        (
            ti["task_id"],
            ti["map_index"],
            dt.datetime.fromisoformat(ti["start_date"]) if ti.get("start_date") else None,
            dt.datetime.fromisoformat(ti["end_date"]) if ti.get("end_date") else None,
            str(ti["state"]),
        )
        for ti in tis
    ]
    return _task_times(rows)


def _task_times(rows: list[tuple[str, int, Any, Any, str]]) -> dict[str, Any]:
    """(task id, map index, start, end, state) rows → per task: instances, summed run time, span, states."""
    per_task: dict[str, dict[str, Any]] = {}
    for task_id, _map_index, start, end, state in rows:
        entry = per_task.setdefault(
            task_id, {"instances": 0, "seconds": 0.0, "states": defaultdict(int), "first_start": None, "last_end": None}
        )
        entry["instances"] += 1
        entry["states"][state.rsplit(".", 1)[-1].lower()] += 1
        if start and end:
            entry["seconds"] += (end - start).total_seconds()
            entry["first_start"] = min(filter(None, [entry["first_start"], start]))
            entry["last_end"] = max(filter(None, [entry["last_end"], end]))
    for entry in per_task.values():
        entry["span_s"] = (
            round((entry["last_end"] - entry["first_start"]).total_seconds(), 2)
            if entry["first_start"] and entry["last_end"]
            else 0.0
        )
        entry["seconds"] = round(entry["seconds"], 2)
        entry["states"] = dict(entry["states"])
        entry.pop("first_start")
        entry.pop("last_end")
    return {"task_instances": len(rows), "tasks": per_task}


# =======================================================================================
# printing
# =======================================================================================


def print_scenario(r: dict[str, Any]) -> None:
    print(
        f"\n--- {r['scenario']}: {r['state']}, wall {r['wall_s']} s; task bodies {r['task_bodies_s']} s; "
        f"outside task bodies (Airflow) {r['outside_task_bodies_s']} s = {r['airflow_share']:.0%}, of which "
        f"dag.test idle polls {r['dag_test_idle_polls_s']} s; {r['airflow']['task_instances']} task instances; "
        f"load average {r['load_average'][0]} -> {r['load_average'][1]}"
    )
    header = (
        f"{'stage':9}{'batches':>8}{'docs':>7}{'ok':>7}{'skip':>6}{'fail':>6}{'activities':>11}{'MB':>8}"
        f"{'body s':>9}{'TI s':>8}{'span s':>8}{'docs/s':>8}{'act/s':>8}"
    )
    print(header)
    for s in r["stages"]:
        print(
            f"{s['stage']:9}{s['batches']:>8}{s['documents']:>7}{s['ok']:>7}{s['skipped']:>6}{s['failed']:>6}"
            f"{s['activities']:>11}{s['mb']:>8}{s['body_s']:>9}{s['task_instances_s']:>8}{s['span_s']:>8}"
            f"{s['docs_per_s']:>8}{s['activities_per_s']:>8}"
        )
    print(f"other task bodies: {r['other_bodies_s']}")
    print(
        f"peak RSS: stage workers {r['worker_peak_rss_mb']} MB ({r['workers_seen']} worker processes), "
        f"task process {r['task_process_peak_rss_mb']} MB"
    )
    print(f"CPU seconds: {r['cpu_s']}; Solr busy in /update {r['solr_busy_s']} s")
    if r.get("searchable_by_query"):
        print(f"changed datasets searchable, as a Solr query saw it: {r['searchable_by_query']}")
    if r.get("searchable"):
        print(f"changed datasets searchable: {r['searchable']}")
    print(f"document states: {r['state_counts']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--activities", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--templates", type=Path, help="template corpus for make_corpus.py")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, in order (default {','.join(SCENARIOS)})"
    )
    parser.add_argument("--change-share", type=float, default=0.01)
    parser.add_argument("--work", type=Path, help="working directory (default bench/out/e2e-<datasets>)")
    parser.add_argument("--json", type=Path, help="where to write the results (default WORK/results.json)")
    parser.add_argument(
        "--blob",
        choices=("azurite", "azurite-memory", "local"),
        default="azurite",
        help="blob storage: Azurite (disk), Azurite without disk persistence, or a local directory",
    )
    parser.add_argument(
        "--safety-period-s",
        type=int,
        default=0,
        help="REFRESHER_SAFETY_CHECK_PERIOD_S (0: schema-invalid files are cleaned at once)",
    )
    parser.add_argument("--airflow-log-level", default="WARNING")
    parser.add_argument(
        "--solr",
        choices=("real", "standin"),
        default="real",
        help="a real SolrCloud (solr/runner, needs Java and Maven) or the lean pure-Python stand-in",
    )
    parser.add_argument("--solr-heap-mb", type=int, default=1024)
    parser.add_argument(
        "--executor",
        choices=("dag-test", "celery"),
        default="dag-test",
        help="dag.test() in this process, or a scheduler with two Celery workers",
    )
    parser.add_argument("--keep", action="store_true", help="keep the refresher database afterwards")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    suffix = "" if args.executor == "dag-test" else f"-{args.executor}"
    args.work = (args.work or PROJECT / "bench" / "out" / f"e2e-{args.datasets}{suffix}").resolve()
    return args


_RUNNING: list[Bench] = []


def _stop_on_signal(signum: int, frame: Any) -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the benchmark at once and clean up.

    Airflow's task runner inside ``dag.test()`` treats a KeyboardInterrupt as a failed task
    and goes on with the run, so the stand-ins, Azurite, the Celery stack and the database
    are stopped here, and the process leaves without unwinding (the stage worker processes
    exit when they see their parent gone).
    """
    print(f"\nsignal {signum}: stopping the benchmark and its services", file=sys.stderr, flush=True)
    for bench in _RUNNING:
        if bench.stack is not None:
            with contextlib.suppress(Exception):
                bench.stack.stop()
        with contextlib.suppress(Exception):
            bench.stop_services()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args.serve, args.corpus)
    bench = Bench(args)
    _RUNNING.append(bench)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    return bench.main()


if __name__ == "__main__":
    sys.exit(main())
