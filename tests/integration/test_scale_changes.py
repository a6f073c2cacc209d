"""The changes made for scale (issue 7): what each must keep exactly as it was, and what it must save.

* the index stage rebuilds the lake texts from the clean file instead of reading two blobs
  per activity: the Solr documents must be identical, and a disagreement must fall back to
  the stored lake blobs;
* batches are cut by documents *and* bytes, and never exceed the per-stage cap;
* preparing a batch reads the database once per batch, not once per document;
* migration 31's indexes exist and serve the lookups they were made for;
* the registry sync updates unchanged datasets in one statement, and anything unusual still
  takes the one-by-one path with its per-record rejections;
* a batch of one document (a big file) still runs in a worker process.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iati_refresher import pipeline, workers
from iati_refresher.db import repository as repo
from iati_refresher.iati.identifiers import lake_name
from iati_refresher.pipeline.recording import prepare_batch
from iati_refresher.registry.base import RegistrySnapshot
from iati_refresher.settings import Settings
from iati_refresher.solr_client import ROLES, SolrClient, write_collections
from iati_refresher.stages import index as index_stage
from iati_refresher.stages.flatten import flatten_document
from iati_refresher.stages.lakify import lake_bundle_name, lakify_document
from iati_refresher.stages.sync import sync_snapshot
from iati_refresher.storage import LocalBlobStore
from tests.standins.solr_server import SolrStandin
from tests.support import services

PROJECT = Path(__file__).resolve().parents[2]
SOURCE = PROJECT / "tests" / "fixtures" / "bench" / "templates" / "activities-2.03.xml"
DOC = "doc-scale"
HASH = "c" * 40
SETTINGS = Settings(solr_batch_size=3)


# ---------------------------------------------------------------------------------------
# index: lake texts from the clean file
# ---------------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[LocalBlobStore, dict[str, Any]]:
    """A document cleaned, flattened and lakified, as the index stage finds it, but without
    the lake bundle (as a version lakified before bundles existed): these tests are about
    rebuilding the lake texts from the clean file (tests/integration/test_lake_bundle.py has
    the bundle's)."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.put_file(SETTINGS.clean_container, f"{HASH}.xml", SOURCE)
    doc: dict[str, Any] = {"id": DOC, "hash": HASH}
    flat = flatten_document(doc, blobs, SETTINGS)
    assert flat.status == "ok", flat
    assert lakify_document(doc, blobs, SETTINGS).status == "ok"
    blobs.delete(SETTINGS.flat_container, [lake_bundle_name(DOC, HASH)])
    doc["flattened_activities"] = flat.data["manifest"]
    return blobs, doc


class CountingBlobs:
    """A blob store that counts reads per container."""

    def __init__(self, inner: LocalBlobStore):
        self.inner = inner
        self.reads: dict[str, int] = {}

    def get_bytes(self, container: str, name: str) -> bytes:
        self.reads[container] = self.reads.get(container, 0) + 1
        return self.inner.get_bytes(container, name)

    def get_to_file(self, container: str, name: str, path: Any) -> int:
        self.reads[container] = self.reads.get(container, 0) + 1
        return self.inner.get_to_file(container, name, path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def index_into_fresh_solr(blobs: Any, doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    with (
        SolrStandin() as standin,
        SolrClient(standin.base_url, collections=write_collections(SETTINGS), max_retries=0, timeout_s=5.0) as client,
    ):
        outcome = index_stage.index_document(doc, blobs, client, SETTINGS)
        assert outcome.status == "ok", outcome
        return {
            role: {d["id"]: {k: v for k, v in d.items() if k != "indexed_datetime"} for d in standin.docs(role)}
            for role in ROLES
        }


def test_lake_texts_from_the_clean_file_equal_the_stored_lake(prepared) -> None:
    blobs, doc = prepared
    counting = CountingBlobs(blobs)
    from_clean = index_into_fresh_solr(counting, doc)
    assert counting.reads.get(SETTINGS.lake_container, 0) == 0, "no lake blob read when the streams agree"
    assert counting.reads[SETTINGS.clean_container] == 1
    blobs.delete(SETTINGS.clean_container, [f"{HASH}.xml"])  # only the stored lake is left
    counting = CountingBlobs(blobs)
    from_lake = index_into_fresh_solr(counting, doc)
    assert counting.reads[SETTINGS.lake_container] == 2 * len(from_lake["activity"])
    assert from_clean == from_lake
    activity = next(iter(from_clean["activity"].values()))
    assert activity["iati_xml"].startswith("<iati-activity") and json.loads(activity["iati_json"])["iati-activity"]


def test_a_clean_file_that_disagrees_falls_back_to_the_stored_lake(prepared) -> None:
    blobs, doc = prepared
    expected = index_into_fresh_solr(blobs, doc)
    # A clean file whose second activity has another identifier: from there on, blobs are read.
    text = SOURCE.read_text(encoding="utf-8").replace("XX-TEMPLATE-2<", "XX-SOMETHING-ELSE<")
    blobs.put_bytes(SETTINGS.clean_container, f"{HASH}.xml", text.encode("utf-8"))
    counting = CountingBlobs(blobs)
    assert index_into_fresh_solr(counting, doc) == expected
    assert counting.reads[SETTINGS.lake_container] == 2 * (len(expected["activity"]) - 1)


def test_an_unparseable_clean_file_falls_back_and_a_missing_lake_blob_is_still_reported(prepared) -> None:
    blobs, doc = prepared
    blobs.put_bytes(SETTINGS.clean_container, f"{HASH}.xml", b"<iati-activities><iati-act")
    assert index_into_fresh_solr(blobs, doc)["activity"]
    blobs.delete(SETTINGS.lake_container, [lake_name(DOC, "XX-TEMPLATE-3", 0, "json")])
    with (
        SolrStandin() as standin,
        SolrClient(standin.base_url, collections=write_collections(SETTINGS), max_retries=0, timeout_s=5.0) as client,
    ):
        outcome = index_stage.index_document(doc, blobs, client, SETTINGS)
    assert (outcome.status, outcome.code) == ("failed", "lake_missing")


# ---------------------------------------------------------------------------------------
# batches: documents and bytes
# ---------------------------------------------------------------------------------------


def sized(*sizes: int | None) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "source_bytes": size} for i, size in enumerate(sizes)]


def test_chunks_close_on_the_document_count_or_the_byte_budget() -> None:
    chunks = pipeline.chunk_documents(sized(40, 40, 40, 10, 10, 10, 10, 200, 5), max_documents=3, max_bytes=100)
    assert [[d["id"] for d in c] for c in chunks] == [["d0", "d1"], ["d2", "d3", "d4"], ["d5", "d6"], ["d7"], ["d8"]]


def test_unknown_sizes_count_as_nothing_and_order_is_kept() -> None:
    chunks = pipeline.chunk_documents(sized(None, None, None, None, None), max_documents=2, max_bytes=1)
    assert [[d["id"] for d in c] for c in chunks] == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert pipeline.chunk_documents([], max_documents=5, max_bytes=5) == []


@pytest.fixture
def flatten_ready(db, pg_dbname: str, monkeypatch: pytest.MonkeyPatch):
    """Ten documents ready for flatten, of 1, 2, ... 10 MB; the pipeline pointed at this database."""
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_DB", services.airflow_uri(pg_dbname))
    db.execute(
        "INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o1', 'org', 'Org', now(), now())"
    )
    for i in range(1, 11):
        db.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, name, downloaded,
                                     clean_end, source_bytes)
               VALUES (%s, %s, 'http://x', now(), now(), 'o1', %s, now() + make_interval(secs => %s), now(), %s)""",
            (f"d{i:02d}", HASH, f"name-{i:02d}", i, i * 1_000_000),
        )
    db.commit()
    return db


def test_plan_batches_cuts_by_bytes_and_stops_at_the_cap(flatten_ready) -> None:
    settings = Settings(batch_size=4, batch_max_bytes=10_000_000, max_batches_per_stage=100)
    batches = pipeline.plan_batches("flatten", settings)
    assert [b["ids"] for b in batches] == [
        ["d01", "d02", "d03", "d04"],
        ["d05"],
        ["d06"],
        ["d07"],
        ["d08"],
        ["d09"],
        ["d10"],
    ]
    assert [b["key"] for b in batches] == [f"{n:04d}" for n in range(7)]
    assert batches[0]["label"] == "name-01 +3" and batches[1]["label"] == "name-05"
    capped = pipeline.plan_batches("flatten", settings.replace(max_batches_per_stage=3))
    assert [b["ids"] for b in capped] == [b["ids"] for b in batches[:3]]


# ---------------------------------------------------------------------------------------
# preparing a batch: one query, whatever the number of documents
# ---------------------------------------------------------------------------------------


class CountingConnection:
    def __init__(self, conn: Any):
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        self.statements.append(str(sql))
        return self.conn.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def add_report(db, report_id: int, doc_id: str, hash_: str, valid: bool) -> None:
    db.execute(
        """INSERT INTO validation (id, document_id, document_hash, document_url, created, valid, report)
                  VALUES (%s, %s, %s, 'u', now(), %s, %s)""",
        (report_id, doc_id, hash_, valid, json.dumps({"valid": valid, "n": report_id})),
    )


def test_newest_report_per_hash_and_reports_by_id(db) -> None:
    add_report(db, 1, "a", "h1", False)
    add_report(db, 2, "a", "h1", True)
    add_report(db, 3, "b", "h2", False)
    db.commit()
    latest = repo.latest_reports_for_hashes(db, ["h1", "h2", "h3"])
    assert {h: (r["id"], r["valid"]) for h, r in latest.items()} == {"h1": (2, True), "h2": (3, False)}
    reports = repo.validation_reports(db, [3, 1, 99])
    assert sorted(reports) == [1, 3] and reports[3]["report"] == {"valid": False, "n": 3}


def test_preparing_a_clean_batch_reads_the_reports_in_one_query(db) -> None:
    for n in range(1, 6):
        add_report(db, n, f"d{n}", f"h{n}", n % 2 == 0)
    db.commit()
    docs = [
        {"id": f"d{n}", "hash": f"h{n}", "validation": n, "black_flag": None, "regenerate_validation_report": False}
        for n in range(1, 6)
    ]
    counting = CountingConnection(db)
    prepared = prepare_batch(counting, "clean", docs)
    assert [d["report"]["n"] for d in prepared] == [1, 2, 3, 4, 5]
    assert len(counting.statements) == 1


def test_preparing_a_validate_batch_looks_up_reusable_reports_in_one_query(db) -> None:
    docs = [
        {
            "id": f"d{n}",
            "hash": f"h{n}",
            "validation": None,
            "file_schema_valid": None,
            "black_flag": None,
            "regenerate_validation_report": False,
        }
        for n in range(1, 6)
    ]
    counting = CountingConnection(db)
    assert [d["id"] for d in prepare_batch(counting, "validate", docs)] == ["d1", "d2", "d3", "d4", "d5"]
    assert len(counting.statements) == 1


def test_migration_31_indexes_serve_the_report_lookup(db) -> None:
    names = {r["indexname"] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"validation_document_hash_id", "run_stage_telemetry_finished_at"} <= names
    db.execute("SET enable_seqscan = off")  # a near-empty table: ask whether the index *can* serve it
    plan = "\n".join(
        r["QUERY PLAN"]
        for r in db.execute(
            """EXPLAIN SELECT DISTINCT ON (document_hash) document_hash, id, valid FROM validation
            WHERE document_hash = ANY(%s) ORDER BY document_hash, id DESC""",
            (["h1"],),
        )
    )
    assert "validation_document_hash_id" in plan


# ---------------------------------------------------------------------------------------
# registry sync: unchanged datasets in one statement
# ---------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 12, 0, 0)


def registry(datasets: list[dict[str, Any]], publishers: tuple[str, ...] = ("org-a", "org-b")) -> RegistrySnapshot:
    pubs = [{"org_id": p, "name": p, "title": p.title()} for p in publishers]
    return RegistrySnapshot(publishers=pubs, datasets=datasets, index_created=1, etag='"e"', source="bds")


def dataset(n: int, publisher: str = "org-a", **changes: Any) -> dict[str, Any]:
    return {
        "id": f"d{n}",
        "hash": f"{n:040x}",
        "url": f"http://publisher/{n}.xml",
        "name": f"ds-{n}",
        "publisher": publisher,
        "cached_dataset_url": f"http://bds/{n}.xml",
        **changes,
    }


def sync(db, snapshot: RegistrySnapshot, at: datetime) -> Any:
    return sync_snapshot(
        db,
        snapshot,
        seen_at=at,
        run_id="r",
        publisher_safety_share=0.5,
        document_safety_share=0.5,
        remove_version=lambda d, h: None,
        remove_dataset=lambda d, h: None,
    )


class CountingStatements(CountingConnection):
    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return self.conn.transaction(*args, **kwargs)


def test_unchanged_datasets_are_updated_in_one_statement(db) -> None:
    sync(db, registry([dataset(n) for n in range(50)]), T0)
    later = T0 + timedelta(minutes=15)
    renamed = [dataset(n, name=f"renamed-{n}", publisher="org-b") if n == 7 else dataset(n) for n in range(50)]
    counting = CountingStatements(db)
    result = sync(counting, registry(renamed), later)
    assert (result.unchanged, result.added, result.updated, result.rejected) == (50, [], [], [])
    document_statements = [s for s in counting.statements if "document" in s and "publisher (" not in s]
    assert len(document_statements) < 10, "not one statement per dataset"
    rows = {r["id"]: r for r in db.execute("SELECT id, name, publisher, last_seen FROM document")}
    assert all(r["last_seen"] == later for r in rows.values())
    assert (rows["d7"]["name"], rows["d7"]["publisher"]) == ("renamed-7", "org-b")


def test_anything_unusual_takes_the_careful_path_with_the_same_result(db) -> None:
    sync(db, registry([dataset(n) for n in range(5)]), T0)
    later = T0 + timedelta(minutes=15)
    # d3 now names a publisher the registry no longer lists: the bulk statement would fail on
    # the foreign key, so every dataset goes one by one and only d3 is rejected.
    datasets = [dataset(n, publisher="org-gone") if n == 3 else dataset(n) for n in range(5)]
    result = sync(db, registry(datasets, publishers=("org-a",)), later)
    assert result.unchanged == 4 and [r["record"]["id"] for r in result.rejected] == ["d3"]
    assert result.removed == ["d3"]  # not seen in this sync, as before: the sweep removes it
    seen = {r["id"]: r["last_seen"] for r in db.execute("SELECT id, last_seen FROM document")}
    assert seen == {"d0": later, "d1": later, "d2": later, "d4": later}
    # a duplicate id in the index: one by one too (the second copy is simply unchanged again)
    again = T0 + timedelta(minutes=30)
    result = sync(db, registry([dataset(n) for n in range(5) if n != 3] + [dataset(2)]), again)
    assert result.unchanged == 5 and not result.rejected and not result.removed


# ---------------------------------------------------------------------------------------
# a batch of one document still runs in a worker process
# ---------------------------------------------------------------------------------------


def _where(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "document_id": doc["id"],
        "status": "ok",
        "code": None,
        "message": None,
        "retryable": False,
        "data": {"pid": os.getpid()},
    }


def test_a_single_document_batch_is_isolated_in_a_worker_process() -> None:
    """A file over the byte budget has a batch of its own: it must not run in the task process."""
    [(doc, outcome)] = list(workers.run_pool(_where, [{"id": "big"}], Settings(), kind="process", size=4, resolved={}))
    assert doc["id"] == "big" and outcome["data"]["pid"] != os.getpid()
    [(_, inline)] = list(workers.run_pool(_where, [{"id": "d"}], Settings(), kind="thread", size=1, resolved={}))
    assert inline["data"]["pid"] == os.getpid()
