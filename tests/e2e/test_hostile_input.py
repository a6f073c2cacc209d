"""Hostile input, end to end: every case ends in a recorded, explained per-document state.

One registry serves every hostile file of :mod:`tests.support.hostile` next to good ones;
a single ``iati_refresh`` run through ``dag.test()`` takes them all.  The built-in
validator is used (no Validator connection), so our own parsers meet every file.  Checked:

* each document's end state (indexed, or parked at a stage with a code and message);
* no file is read and no network request is made on a document's behalf (an inotify watch
  on the local "secret", a request log on the canary URLs);
* worker processes stay small (peak RSS sampled while the run goes on);
* the good documents in the same batches are indexed;
* a second run picks nothing up again (no document loops).

The several-hundred-MB file is run at stage level instead (download → validate → clean →
flatten → lakify, each in a fresh process that reports its own peak RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.iati.identifiers import identifier_hash
from tests.e2e.world import ORG_A, ORG_B, World, open_world, run_dag, succeeded
from tests.standins.registry_server import bds_dataset
from tests.support import hostile

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
MAX_DOWNLOAD = 4 * MIB
RSS_LIMIT_MB = 200
HUGE_TRANSACTIONS = 5_000  # one activity of about 1.5 MB (typical activities are a few kB)
SECRET_TEXT = "TOP-SECRET-hostile-input-canary"

# document id → (stage where it ends, outcome, code); ("index", "ok", None) means searchable.
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    "h-xxe-file": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-xxe-http": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-xxe-param": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-dtd": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-laughs": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-xinclude": ("index", "ok", None),
    "h-truncated": ("clean", "skipped", "not_iati"),
    "h-not-iati": ("clean", "skipped", "not_iati"),
    "h-html-200": ("validate", "skipped", "doctype_refused"),  # never sent to a Validator
    "h-empty": ("validate", "skipped", "rejected"),  # the API's 400 "No body", no report
    "h-zero": ("clean", "skipped", "no_valid_activities"),
    "h-binary": ("download", "gave_up", "charset_undetectable"),
    "h-identifiers": ("index", "ok", None),
    "h-duplicates": ("index", "ok", None),
    "h-namespace": ("index", "ok", None),
    "h-latin1": ("index", "ok", None),
    "h-cp1252": ("index", "ok", None),
    "h-utf16": ("index", "ok", None),
    "h-utf8-bom": ("index", "ok", None),
    "h-gzip-body": ("index", "ok", None),
    "h-gzip-encoded": ("index", "ok", None),
    "h-oversize": ("download", "gave_up", "too_large"),
    "h-gzip-bomb": ("download", "gave_up", "too_large"),
    "h-huge-activity": ("index", "ok", None),
    "h-good": ("index", "ok", None),
}


class ChildMemory(threading.Thread):
    """Samples the peak RSS (VmHWM) of this process's stage worker processes until stopped
    (only those: Azurite, Redis and other servers of the session are children too)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="child-memory")
        self.peak_kb: dict[int, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self._halt.wait(0.02):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    status = (entry / "status").read_text()
                    if b"iati_refresher.worker_pool" not in (entry / "cmdline").read_bytes():
                        continue
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields.get("PPid", "").strip() == me and "VmHWM" in fields:
                    kb = int(fields["VmHWM"].split()[0])
                    self.peak_kb[int(entry.name)] = max(kb, self.peak_kb.get(int(entry.name), 0))

    def __enter__(self) -> ChildMemory:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(10)


@pytest.fixture
def world(pg_dbname, azurite, monkeypatch, tmp_path) -> Iterator[World]:
    with open_world(pg_dbname[-12:].replace("_", "-"), pg_dbname, azurite, monkeypatch) as w:
        monkeypatch.delenv("AIRFLOW_CONN_IATI_VALIDATOR")  # the built-in validator: our parsers see everything
        monkeypatch.setenv("REFRESHER_MAX_DOWNLOAD_BYTES", str(MAX_DOWNLOAD))
        monkeypatch.setenv("REFRESHER_BATCH_SIZE", "30")  # hostile and good documents share batches
        yield w


def publish_hostile(world: World, secret: Path) -> None:
    canary = world.registry.url + "/canary"
    files: dict[str, tuple[str, bytes]] = {
        "h-xxe-file": (ORG_A, hostile.external_file_entity(secret)),
        "h-xxe-http": (ORG_A, hostile.external_network_entity(canary + "/entity")),
        "h-xxe-param": (ORG_A, hostile.parameter_entity(canary + "/param.dtd")),
        "h-dtd": (ORG_A, hostile.external_dtd(canary + "/iati.dtd")),
        "h-laughs": (ORG_A, hostile.billion_laughs()),
        "h-xinclude": (ORG_A, hostile.xinclude(secret)),
        "h-truncated": (ORG_A, hostile.truncated()),
        "h-not-iati": (ORG_A, hostile.not_iati()),
        "h-empty": (ORG_A, hostile.empty()),
        "h-zero": (ORG_A, hostile.zero_activities()),
        "h-binary": (ORG_B, hostile.binary()),
        "h-identifiers": (ORG_B, hostile.identifiers_with_comments_and_carriage_returns()),
        "h-duplicates": (ORG_B, hostile.duplicate_identifiers()),
        "h-namespace": (ORG_B, hostile.namespace_below_activity()),
        "h-latin1": (ORG_B, hostile.latin1_declared()),
        "h-cp1252": (ORG_B, hostile.cp1252_undeclared()),
        "h-utf16": (ORG_B, hostile.utf16_with_bom()),
        "h-utf8-bom": (ORG_B, hostile.utf8_with_bom()),
        "h-huge-activity": (ORG_B, hostile.huge_activity(HUGE_TRANSACTIONS)),
        "h-good": (ORG_A, hostile.utf8(hostile.activity("XX-HOSTILE-GOOD-1"), hostile.activity("XX-HOSTILE-GOOD-2"))),
    }
    for doc_id, (org, data) in files.items():
        world.publish(doc_id, doc_id, org, data)
    gz = hostile.utf8(hostile.activity("XX-HOSTILE-GZIP-1"))
    world.publish("h-gzip-body", "h-gzip-body", ORG_A, gz, route="/gzip-body")
    world.publish("h-gzip-encoded", "h-gzip-encoded", ORG_A, gz + b"<!-- encoded -->", route="/gzip-encoded")
    base = world.registry.url
    for doc_id, url in {
        "h-html-200": f"{base}/html-200",
        "h-oversize": f"{base}/oversize/{MAX_DOWNLOAD + MIB}",
        "h-gzip-bomb": f"{base}/oversize/{64 * MIB}?gzip=1",
    }.items():
        world.datasets[doc_id] = bds_dataset(doc_id, doc_id, ORG_A, cached_url=url, hash_=identifier_hash(doc_id))
    world.serve()


def end_state(world: World, doc_id: str) -> tuple[str, str, str | None]:
    """The last stage a document reached, with that stage's outcome and code."""
    rows = {r["stage"]: r for r in world.rows("SELECT * FROM document_stage WHERE document_id = %s", doc_id)}
    for stage in reversed(("download", "validate", "clean", "flatten", "lakify", "index")):
        if stage in rows:
            return stage, rows[stage]["outcome"], rows[stage]["code"]
    return "none", "none", None


def test_hostile_files_end_in_explained_states_without_reading_files_or_the_network(
    world: World, dagbag, tmp_path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET_TEXT)
    with hostile.OpenWatch(secret) as probe:
        secret.read_text()
    assert probe.events() > 0, "the watch notices a read"
    publish_hostile(world, secret)
    assert set(world.datasets) == set(EXPECTED)

    with hostile.OpenWatch(secret) as watch, ChildMemory() as memory:
        run, states, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run), states

    got = {doc_id: end_state(world, doc_id) for doc_id in EXPECTED}
    assert got == EXPECTED
    for doc_id, (stage, outcome, _code) in EXPECTED.items():
        if outcome != "ok":
            row = world.stage(doc_id, stage)
            assert row["message"], f"{doc_id}: {stage} {outcome} must say why"
            assert world.doc(doc_id)["solr_indexed_hash"] is None
        else:
            assert world.doc(doc_id)["solr_indexed_hash"] == world.doc(doc_id)["hash"], doc_id

    # nothing was fetched or read on a document's behalf
    assert watch.events() == 0, "the secret file was opened"
    assert [r.path for r in world.registry.requests if r.path.startswith("/canary")] == []
    everything = json.dumps(world.rows("SELECT row_to_json(d)::text AS j FROM document d")) + json.dumps(
        [d for c in ("activity", "transaction", "budget") for d in world.solr.docs(c)]
    )
    assert SECRET_TEXT not in everything

    # memory: every worker stayed small, whatever it was fed
    assert memory.peak_kb, "workers were sampled"
    print(f"peak worker RSS: {max(memory.peak_kb.values()) // 1024} MB over {len(memory.peak_kb)} processes")
    assert max(memory.peak_kb.values()) < RSS_LIMIT_MB * 1024, f"peak worker RSS {max(memory.peak_kb.values())} kB"

    check_details(world)

    # a second run has nothing to do: no hostile document loops
    run2, states2, _ = run_dag(dagbag, "iati_refresh")
    assert succeeded(run2), states2
    done = world.rows(
        "SELECT stage, sum(documents_in) AS n FROM run_stage_telemetry WHERE run_id = %s GROUP BY stage", run2.run_id
    )
    assert {r["stage"]: int(r["n"]) for r in done if int(r["n"])} == {}
    assert {doc_id: end_state(world, doc_id) for doc_id in EXPECTED} == EXPECTED


def check_details(world: World) -> None:
    """What the indexed hostile documents look like in Solr and the lake."""

    def solr(doc_id: str, collection: str = "activity") -> list[dict[str, Any]]:
        return world.solr.docs(collection, f'iati_activities_document_id:"{doc_id}"')

    # identifiers with a comment, a character reference CR and a literal CR LF: one rule everywhere
    wanted = ["XX-HOSTILE-CMT-1", "XX-HOSTILE-CR-2", "XX-HOSTILE-CRLF-3"]
    assert sorted(d["iati_identifier"] for d in solr("h-identifiers")) == wanted
    lake = set(world.blobs.list(world.containers["lake"], "h-identifiers/"))
    assert lake == {f"h-identifiers/{identifier_hash(i)}.{ext}" for i in wanted for ext in ("xml", "json")}

    # duplicate identifiers: both kept, neither overwrites the other
    dups = solr("h-duplicates")
    assert sorted(d["id"].rsplit("--", 1)[1] for d in dups) == ["0", "1"]
    assert len({d["iati_xml"] for d in dups}) == 2

    # a namespace declared below the activity: a prefixed field, not a Clark name
    assert solr("h-namespace")[0]["budget_bo_fin"] == ["42"]

    # encodings: the source bytes are stored unchanged, the text is decoded right
    titles = {d: solr(d)[0]["title_narrative"] for d in ("h-latin1", "h-cp1252", "h-utf16", "h-utf8-bom")}
    assert titles["h-latin1"] == [hostile.LATIN1_TITLE]
    assert titles["h-cp1252"] == [hostile.CP1252_TITLE]
    assert titles["h-utf16"][0].startswith("\u00dast\u00ed")
    assert world.doc("h-cp1252")["source_encoding"] == "cp1252"
    source = world.blobs.get_bytes(world.containers["source"], world.doc("h-cp1252")["hash"] + ".xml")
    assert source == hostile.cp1252_undeclared()

    # compressed bodies are stored decompressed
    assert world.doc("h-gzip-body")["source_bytes"] == len(hostile.utf8(hostile.activity("XX-HOSTILE-GZIP-1")))

    # the huge activity: one activity, every transaction exploded
    assert len(solr("h-huge-activity")) == 1
    assert len(solr("h-huge-activity", "transaction")) == HUGE_TRANSACTIONS

    # explained refusals
    assert world.doc("h-oversize")["download_error"] == 413 and world.doc("h-gzip-bomb")["download_error"] == 413
    assert world.doc("h-binary")["download_error"] == 2
    # DOCTYPEs and entities are refused before any Validator sees them: a reason, no report
    for doc_id in ("h-xxe-file", "h-laughs", "h-dtd", "h-html-200"):
        assert "DOCTYPE" in world.stage(doc_id, "validate")["message"]
        assert world.doc(doc_id)["validation"] is None and world.doc(doc_id)["file_schema_valid"] is None


# --- a file of several hundred MB, stage by stage ---------------------------------------------------

BIG_MB = 300

STAGE_SCRIPT = """
import json, os, sys
stage, workdir = sys.argv[1], sys.argv[2]
from iati_refresher.settings import Settings
settings = Settings.from_env(max_download_bytes=1 << 30, download_timeout_s=600)
src, report, clean = f"{workdir}/source.xml", f"{workdir}/report.json", f"{workdir}/clean.xml"
if stage == "download":
    from iati_refresher.stages.download import fetch_to_file
    result = fetch_to_file(sys.argv[3], src, settings)
    out = {"ok": result.ok, "bytes": result.bytes, "encoding": result.encoding}
elif stage == "validate":
    from iati_refresher.validation.builtin import validate_file
    status, body = validate_file(src, meta=True)
    json.dump(body, open(report, "w"))
    out = {"status": status, "activities": len(body.get("iati-activities") or [])}
elif stage == "clean":
    from iati_refresher.stages.clean import clean_file
    result = clean_file(src, json.load(open(report)), clean)
    out = {"mode": result.mode, "total": result.activities_total, "kept": result.activities_kept}
elif stage == "flatten":
    from iati_refresher.stages.flatten import flatten_file
    out = {"activities": flatten_file(clean, os.devnull).activities}  # 0.5 GB of JSON lines: not kept
elif stage == "lakify":
    from iati_refresher.stages.lakify import iter_lake_entries
    out = {"activities": sum(1 for _ in iter_lake_entries(clean))}
# VmHWM, not ru_maxrss: after fork and exec, ru_maxrss still counts the (big) parent's pages.
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
out["peak_rss_mb"] = int(status["VmHWM"].split()[0]) / 1024
print(json.dumps(out))
"""


def start_stage(stage: str, workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", STAGE_SCRIPT, stage, str(workdir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_stage(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def stage_in_fresh_process(stage: str, workdir: Path, *args: str) -> dict[str, Any]:
    return finish_stage(start_stage(stage, workdir, *args))


@pytest.mark.slow
def test_a_file_of_several_hundred_mb_is_processed_with_bounded_memory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFRESHER_ALLOW_PRIVATE_ADDRESSES", "true")
    served = tmp_path / "served"
    served.mkdir()
    big = served / "big.xml"
    activities = hostile.write_big_file(big, BIG_MB * MIB, invalid_every=50)
    size = big.stat().st_size

    handler = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tmp_path / "work"
    work.mkdir()
    try:
        results = {
            "download": stage_in_fresh_process("download", work, f"http://127.0.0.1:{server.server_address[1]}/big.xml")
        }
        assert results["download"]["ok"], results
    finally:
        server.shutdown()
        server.server_close()
    big.unlink()  # only the downloaded copy is used from here on
    for stage in ("validate", "clean"):
        results[stage] = stage_in_fresh_process(stage, work)
    both = {stage: start_stage(stage, work) for stage in ("flatten", "lakify")}  # both read the clean file
    results.update({stage: finish_stage(process) for stage, process in both.items()})
    print("peak RSS per stage (MB):", {stage: round(r["peak_rss_mb"]) for stage, r in results.items()})

    assert results["download"]["ok"] and results["download"]["bytes"] == size >= BIG_MB * MIB
    assert results["validate"] == {**results["validate"], "status": 422, "activities": activities}
    invalid = activities // 50
    assert (results["clean"]["mode"], results["clean"]["total"], results["clean"]["kept"]) == (
        "reduced",
        activities,
        activities - invalid,
    )
    assert results["flatten"]["activities"] == results["lakify"]["activities"] == activities - invalid
    for stage, result in results.items():
        assert result["peak_rss_mb"] < RSS_LIMIT_MB, f"{stage} peaked at {result['peak_rss_mb']:.0f} MB"
