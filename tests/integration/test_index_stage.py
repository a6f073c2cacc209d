"""The index stage against the Solr stand-in: no gap in search, rollback, convergence, clean-up."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from iati_refresher.iati.identifiers import lake_name, solr_activity_id
from iati_refresher.settings import Settings
from iati_refresher.solr_client import ROLES, SolrClient, field_query, write_collections
from iati_refresher.stages import index as index_stage
from iati_refresher.stages.index import (
    ReconcileRefused,
    activity_documents,
    activity_identifier,
    index_document,
    location_latlon,
    reconcile,
    unindex_document,
)
from iati_refresher.storage import LocalBlobStore
from tests.standins.solr_server import SolrStandin, UpdateEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "index"
DOC = "doc-1"
IN_DOC = field_query("iati_activities_document_id", DOC)
SETTINGS = Settings(solr_batch_size=2)


def flat(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


V1 = flat("dataset-v1.jsonl")
V2 = flat("dataset-v2.jsonl")


def publish(
    blobs: LocalBlobStore,
    document_id: str,
    hash_: str,
    activities: list[dict[str, Any]],
    *,
    without_lake: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write what flatten and lakify would have written; return the document row."""
    lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in activities)
    blobs.put_bytes(SETTINGS.flat_container, f"{document_id}/{hash_}.jsonl", lines.encode("utf-8"))
    seen: dict[str, int] = {}
    for activity in activities:
        identifier = activity_identifier(activity)
        if not identifier:
            continue
        n = seen.get(identifier, 0)
        seen[identifier] = n + 1
        if identifier in without_lake:
            continue
        xml = (
            f"<iati-activity><iati-identifier>{escape(identifier)}</iati-identifier>"
            f"<!-- {hash_} #{n} --></iati-activity>\n"
        )
        lake_json = json.dumps({"iati-activity": [{"iati-identifier": [{"text()": identifier}], "n": n}]})
        blobs.put_bytes(SETTINGS.lake_container, lake_name(document_id, identifier, n, "xml"), xml.encode())
        blobs.put_bytes(SETTINGS.lake_container, lake_name(document_id, identifier, n, "json"), lake_json.encode())
    return {"id": document_id, "hash": hash_, "flattened_activities": {"activities": len(activities)}}


def snapshot(standin: SolrStandin, q: str = IN_DOC) -> dict[str, dict[str, dict[str, Any]]]:
    """role → id → stored document (without the time it was indexed)."""
    return {
        role: {d["id"]: {k: v for k, v in d.items() if k != "indexed_datetime"} for d in standin.docs(role, q)}
        for role in ROLES
    }


def ids(state: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    return {role: set(docs) for role, docs in state.items()}


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def standin():
    with SolrStandin() as solr:
        yield solr


def client_for(standin: SolrStandin, **kwargs: Any) -> SolrClient:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout_s", 5.0)
    return SolrClient(standin.base_url, collections=write_collections(SETTINGS), **kwargs)


@pytest.fixture
def solr(standin):
    with client_for(standin) as client:
        yield client


def test_first_index(blobs, standin, solr):
    events: list[UpdateEvent] = []
    standin.on_update = events.append
    outcome = index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    assert outcome.status == "ok", outcome
    assert outcome.data == {"activities": 3, "transactions": 3, "budgets": 3, "skipped_no_identifier": 1, "removed": 0}
    state = snapshot(standin)
    assert set(state["activity"]) == {solr_activity_id(DOC, f"XM-EXAMPLE-1-A{i}", 0) for i in (1, 2, 3)}
    a1 = state["activity"][solr_activity_id(DOC, "XM-EXAMPLE-1-A1", 0)]
    assert a1["iati_xml"].startswith("<iati-activity><iati-identifier>XM-EXAMPLE-1-A1</iati-identifier>")
    assert json.loads(a1["iati_json"])["iati-activity"][0]["n"] == 0
    assert a1["iati_activities_document_hash"] == "h1"
    assert a1["location_point_latlon"] == ["-1.2921,36.8219"]  # "91 10" is out of range
    assert "capital_spend_percentage" not in a1  # "" dropped (a pdouble field would reject it)
    assert a1["budget_bigorg_bigorg_finance_bigorg_applicant"] == ["extension value"]  # catch-all field
    assert len(state["transaction"]) == 3
    assert len(state["budget"]) == 3
    assert all(d["iati_activities_document_id"] == DOC for docs in state.values() for d in docs.values())
    assert all("iati_xml" not in d for d in state["transaction"].values())
    assert events
    assert all(e.added <= SETTINGS.solr_batch_size for e in events)


def test_batches(blobs, standin, solr, monkeypatch):
    events: list[UpdateEvent] = []
    standin.on_update = events.append
    row = publish(blobs, DOC, "h1", V1)
    assert index_document(row, blobs, solr, Settings(solr_batch_size=500)).status == "ok"
    assert [e.added for e in events if e.added] == [3, 3, 3]  # one request per collection
    events.clear()
    monkeypatch.setattr(index_stage, "MAX_BATCH_CHARS", 1)  # every document is "large"
    assert index_document(row, blobs, solr, Settings(solr_batch_size=500)).status == "ok"
    assert [e.added for e in events if e.added] == [1] * 9


def test_reindex_of_the_same_version_changes_nothing(blobs, standin, solr):
    row = publish(blobs, DOC, "h1", V1)
    index_document(row, blobs, solr, SETTINGS)
    before = snapshot(standin)
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert outcome.status == "ok"
    assert outcome.data["removed"] == 0
    assert snapshot(standin) == before


def test_a_republished_dataset_stays_searchable_during_its_reindex(blobs, standin, solr):
    """(a) After every update request: never zero activities, never one missing that both versions have."""
    assert index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS).status == "ok"
    v1_ids = ids(snapshot(standin))
    both = {solr_activity_id(DOC, identifier, 0) for identifier in ("XM-EXAMPLE-1-A1", "XM-EXAMPLE-1-A2")}
    observed: list[tuple[int, int, int, set[str]]] = []
    probe = client_for(standin)

    def look(event: UpdateEvent) -> None:
        observed.append(
            (
                probe.count("activity", IN_DOC),
                probe.count("transaction", IN_DOC),
                probe.count("budget", IN_DOC),
                set(probe.iter_ids("activity", IN_DOC)),
            )
        )

    standin.on_update = look
    outcome = index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS)
    standin.on_update = None
    probe.close()
    assert outcome.status == "ok", outcome
    assert outcome.data["activities"] == 4
    assert len(observed) >= 8  # many requests: the property is checked between each of them
    for activities, transactions, budgets, activity_ids in observed:
        assert activities > 0
        assert transactions > 0
        assert budgets > 0
        assert both <= activity_ids
    final = snapshot(standin)
    assert set(final["activity"]) == both | {
        solr_activity_id(DOC, "XM-EXAMPLE-1-A4", 0),
        solr_activity_id(DOC, "XM-EXAMPLE-1-A2", 1),
    }
    assert solr_activity_id(DOC, "XM-EXAMPLE-1-A3", 0) not in final["activity"]
    assert all(d["iati_activities_document_hash"] == "h2" for docs in final.values() for d in docs.values())
    assert not (v1_ids["transaction"] & set(final["transaction"]))  # hash is part of the explode id
    assert outcome.data["removed"] == len(v1_ids["activity"] - set(final["activity"])) + len(
        v1_ids["transaction"]
    ) + len(v1_ids["budget"])


def _clean_run(tmp_path: Path) -> tuple[dict[str, Any], list[UpdateEvent]]:
    """Index v1 then v2 with no fault; the final state and the update requests of the v2 run."""
    with SolrStandin() as standin, client_for(standin) as solr:
        blobs = LocalBlobStore(tmp_path / "clean-run")
        index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
        events: list[UpdateEvent] = []
        standin.on_update = events.append
        assert index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS).status == "ok"
        return snapshot(standin), events


@pytest.mark.parametrize("mode", ["request_fails", "fails_mid_batch"])
def test_a_failure_at_any_request_keeps_the_old_version_and_a_rerun_converges(tmp_path, mode):
    """(b) Fail each update request of a reindex in turn; then rerun and compare with a clean run."""
    clean_state, clean_events = _clean_run(tmp_path)
    adds = [i for i, e in enumerate(clean_events) if e.added]
    targets = adds if mode == "fails_mid_batch" else range(len(clean_events))
    assert len(adds) >= 4
    for k in targets:
        with SolrStandin() as standin, client_for(standin) as solr:
            blobs = LocalBlobStore(tmp_path / f"{mode}-{k}")
            index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
            old = snapshot(standin)
            done = 0

            def arm(event: UpdateEvent, k: int = k) -> None:
                nonlocal done
                done += 1
                if done == k:
                    inject()

            def inject() -> None:
                if mode == "fails_mid_batch":
                    standin.fail_mid_batch(after_docs=1)
                else:
                    standin.fail_next(1, updates_only=True)

            if k == 0:
                inject()
            standin.on_update = arm
            row = publish(blobs, DOC, "h2", V2)
            outcome = index_document(row, blobs, solr, SETTINGS)
            standin.on_update = None
            assert outcome.status == "failed", (k, outcome)
            assert outcome.code == "solr_server"
            assert outcome.retryable
            after = snapshot(standin)
            if k in adds:
                # Nothing new is left behind and nothing old is missing.  (Activities already
                # rewritten in place show their new content; their ids are the same.)
                assert ids(after) == ids(old), k
                assert after["transaction"] == old["transaction"]
                assert after["budget"] == old["budget"]
                assert "previous version kept" in outcome.message
            else:
                # The new version was complete; only removing the old documents failed.
                assert all(ids(after)[role] >= set(clean_state[role]) for role in ROLES), k
            rerun = index_document(row, blobs, solr, SETTINGS)
            assert rerun.status == "ok", (k, rerun)
            assert snapshot(standin) == clean_state, k


def test_a_missing_lake_blob_keeps_the_old_version(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    old = snapshot(standin)
    row = publish(blobs, DOC, "h2", V2, without_lake=("XM-EXAMPLE-1-A4",))
    blobs.delete(SETTINGS.lake_container, [lake_name(DOC, "XM-EXAMPLE-1-A4", 0, "xml")])
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "lake_missing", False)
    assert "XM-EXAMPLE-1-A4" in outcome.message
    assert ids(snapshot(standin)) == ids(old)


def test_a_document_solr_rejects_fails_without_retry_and_keeps_the_old_version(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    old = snapshot(standin)
    broken = [dict(a) for a in V2]
    broken[2]["hierarchy"] = "two"
    outcome = index_document(publish(blobs, DOC, "h2", broken), blobs, solr, SETTINGS)
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "solr_client", False)
    assert "hierarchy" in outcome.message
    assert ids(snapshot(standin)) == ids(old)


def test_a_bug_still_leaves_the_old_version(blobs, standin, solr, monkeypatch):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    old = snapshot(standin)
    real = index_stage.activity_documents
    calls = {"n": 0}

    def flaky(activity, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug")
        return real(activity, **kwargs)

    monkeypatch.setattr(index_stage, "activity_documents", flaky)
    with pytest.raises(RuntimeError, match="a bug"):
        index_document(publish(blobs, DOC, "h2", V2), blobs, solr, Settings(solr_batch_size=1))
    assert ids(snapshot(standin)) == ids(old)


def test_solr_down(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    old = snapshot(standin)
    standin.down()
    outcome = index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS)
    standin.up()
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "solr_connection", True)
    assert snapshot(standin) == old


def test_solr_too_slow(blobs, standin):
    standin.delay_next(1, seconds=1.0)
    with client_for(standin, timeout_s=0.2) as slow:
        outcome = index_document(publish(blobs, DOC, "h1", V1), blobs, slow, SETTINGS)
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "solr_timeout", True)


@pytest.mark.parametrize("manifest", [[], {"activities": 0}])
def test_a_version_without_activities_removes_the_dataset(blobs, standin, solr, manifest):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    index_document(publish(blobs, "doc-2", "x1", V1[:1]), blobs, solr, SETTINGS)
    outcome = index_document({"id": DOC, "hash": "h2", "flattened_activities": manifest}, blobs, solr, SETTINGS)
    assert outcome.status == "ok"
    assert outcome.data == {"activities": 0, "transactions": 0, "budgets": 0, "skipped_no_identifier": 0, "removed": 9}
    assert ids(snapshot(standin)) == {role: set() for role in ROLES}
    assert standin.ids("activity", 'iati_activities_document_id:"doc-2"')


def test_missing_flat_file(blobs, standin, solr):
    outcome = index_document(
        {"id": DOC, "hash": "nope", "flattened_activities": {"activities": 3}}, blobs, solr, SETTINGS
    )
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "flat_missing", False)


def test_invalid_flat_line_keeps_the_old_version(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    old = snapshot(standin)
    row = publish(blobs, DOC, "h2", V2)
    good = blobs.get_bytes(SETTINGS.flat_container, f"{DOC}/h2.jsonl")
    first, rest = good.split(b"\n", 1)
    blobs.put_bytes(SETTINGS.flat_container, f"{DOC}/h2.jsonl", first + b"\n" + rest.replace(b"{", b"[", 1))
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert (outcome.status, outcome.code) == ("failed", "flat_invalid")
    assert ids(snapshot(standin)) == ids(old)


def test_inline_activities_and_duplicate_identifiers(blobs, standin, solr):
    publish(blobs, DOC, "h2", V2)  # the lake only
    outcome = index_document({"id": DOC, "hash": "h2", "flattened_activities": V2}, blobs, solr, SETTINGS)
    assert outcome.status == "ok", outcome
    state = snapshot(standin)
    first = state["activity"][solr_activity_id(DOC, "XM-EXAMPLE-1-A2", 0)]
    second = state["activity"][solr_activity_id(DOC, "XM-EXAMPLE-1-A2", 1)]
    assert "#0" in first["iati_xml"]  # each its own lake blob
    assert "#1" in second["iati_xml"]
    assert second["title_narrative"] == ["School meals (second report of the same identifier)"]


def test_ids_the_new_version_no_longer_produces_are_removed(blobs, standin, solr):
    row = publish(blobs, DOC, "h1", V1)
    index_document(row, blobs, solr, SETTINGS)
    # e.g. written by an older release that computed explode ids differently, same hash
    solr.add(
        "transaction",
        [{"id": "old-style-id", "iati_activities_document_id": DOC, "iati_activities_document_hash": "h1"}],
    )
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert outcome.data["removed"] == 1
    assert "old-style-id" not in standin.ids("transaction")


def test_documents_of_another_version_written_meanwhile_are_removed(blobs, standin, solr):
    """Documents the first step could not see (not yet committed) still go, by hash."""
    writer = client_for(standin)
    state = {"done": False}

    def sneak_in(event: UpdateEvent) -> None:
        if not state["done"]:
            state["done"] = True
            writer.add(
                "budget", [{"id": "late", "iati_activities_document_id": DOC, "iati_activities_document_hash": "h0"}]
            )

    standin.on_update = sneak_in
    assert index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS).status == "ok"
    standin.on_update = None
    writer.close()
    assert "late" not in standin.ids("budget")
    assert len(standin.ids("budget")) == 3


def test_unindex_removes_one_dataset_everywhere(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    index_document(publish(blobs, "doc-2", "x1", V2), blobs, solr, SETTINGS)
    kept = snapshot(standin)
    assert unindex_document("doc-2", solr, SETTINGS) == 4 + 6 + 3
    assert not any(standin.ids(role, 'iati_activities_document_id:"doc-2"') for role in ROLES)
    assert snapshot(standin) == kept


def test_reconcile_removes_orphaned_and_stale_documents(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)  # 3 + 3 + 3
    index_document(publish(blobs, "doc-2", "x1", V1[1:2]), blobs, solr, SETTINGS)  # 1 + 1 + 0
    index_document(publish(blobs, "doc-3", "y1", V1[2:3]), blobs, solr, SETTINGS)  # 1 + 0 + 2
    index_document(publish(blobs, "doc-4", "z1", V2), blobs, solr, SETTINGS)  # 4 + 6 + 3
    kept = {role: standin.ids(role, f'{IN_DOC} OR iati_activities_document_id:"doc-4"') for role in ROLES}
    expected = {DOC: "h1", "doc-2": "x2", "doc-4": ["z0", "z1"], "doc-5": "never-indexed"}
    report = reconcile(solr, expected, SETTINGS)
    assert report == {
        "activity": {"scanned": 9, "orphaned": 1, "stale_hash": 1},
        "transaction": {"scanned": 10, "orphaned": 0, "stale_hash": 1},
        "budget": {"scanned": 8, "orphaned": 2, "stale_hash": 0},
    }
    assert {role: standin.ids(role) for role in ROLES} == kept
    assert reconcile(solr, expected, SETTINGS) == {
        role: {"scanned": len(kept[role]), "orphaned": 0, "stale_hash": 0} for role in ROLES
    }


def test_reconcile_refuses_to_empty_the_index(blobs, standin, solr):
    index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    before = snapshot(standin)
    with pytest.raises(ReconcileRefused, match="would be deleted"):
        reconcile(solr, {}, SETTINGS)
    assert snapshot(standin) == before
    report = reconcile(solr, {}, SETTINGS, max_share=1.0)
    assert report["activity"]["orphaned"] == 3
    assert standin.ids("activity") == set()


def test_explode_ids_follow_postgres_jsonb_key_order(db):
    """The reference read activities back from jsonb; do the same and compare the ids."""
    flat_activity = V1[0]
    row = db.execute("SELECT %s::jsonb AS activity", (json.dumps(flat_activity),)).fetchone()["activity"]
    assert list(row) != list(flat_activity)  # jsonb really reorders the keys
    # The reference's steps, in its order:
    reference = dict(row)
    reference["iati_xml"] = "<iati-activity/>"
    reference["iati_json"] = "{}"
    reference["iati_activities_document_id"] = DOC
    reference["iati_activities_document_hash"] = "h1"
    points = reference["location_point_pos"]
    points = [points] if isinstance(points, str) else points
    reference["location_point_latlon"] = [v for v in map(location_latlon, points) if v is not None]
    items = {element: reference.pop(f"@{element}") for element in ("transaction", "budget")}
    reference["id"] = solr_activity_id(DOC, reference["iati_identifier"], 0)
    del reference["iati_xml"], reference["iati_json"]
    expected = {}
    for element, element_items in items.items():
        base = {k: v for k, v in reference.items() if not k.startswith(f"{element}_")}
        expected[element] = [
            hashlib.sha1((json.dumps({**base, **item}) + str(i)).encode()).hexdigest()
            for i, item in enumerate(element_items)
        ]
    built = activity_documents(flat_activity, document_id=DOC, document_hash="h1", occurrence=0)
    assert [d["id"] for d in built.transaction] == expected["transaction"]
    assert [d["id"] for d in built.budget] == expected["budget"]
