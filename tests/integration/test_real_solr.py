"""Everything Solr itself decides, against a real SolrCloud (``solr/runner``, Solr 9.10.1).

Schema acceptance of every document the pipeline builds from the project's fixtures (run
through the real flatten, lakify and index stages), field types and multiple values,
cursor paging, delete by id and by query, ``commitWithin`` visibility, the read and write
aliases, the no-gap reindex queried between every update request, a document Solr
rejects, the node stopped in the middle of a reindex and restarted, and reconcile.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.settings import Settings
from iati_refresher.solr_client import ROLES, SolrClient, SolrError, field_query, write_collections
from iati_refresher.stages.clean import clean_document
from iati_refresher.stages.flatten import flatten_document
from iati_refresher.stages.index import index_document, reconcile, unindex_document
from iati_refresher.stages.lakify import lakify_document
from iati_refresher.storage import LocalBlobStore
from iati_refresher.validation.builtin import validate_file
from tests.integration.test_index_stage import DOC, IN_DOC, V1, V2, publish

pytestmark = pytest.mark.solr

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SETTINGS = Settings(solr_batch_size=2, solr_commit_within_ms=1000)


class Probe(SolrClient):
    """The pipeline's own client; after every update request it makes Solr open a new
    searcher and records what a reader would see then (``commitWithin`` may do the same at
    any moment between two requests)."""

    def __init__(self, *args: Any, observe: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observe = observe

    def _update(self, collection: str, payload: Any, commit_within_ms: int | None) -> dict[str, Any]:
        answer = super()._update(collection, payload, commit_within_ms)
        if self.observe:
            self.observe()
        return answer

    def add(self, collection: str, docs: Any, commit_within_ms: int | None = None) -> int:
        sent = super().add(collection, docs, commit_within_ms)
        if self.observe:
            self.observe()
        return sent


@pytest.fixture
def solr(solrcloud) -> Any:
    client = Probe(solrcloud.url, collections=write_collections(SETTINGS), max_retries=0, timeout_s=30)
    for role in ROLES:
        client.delete_query(role, "*:*")
        client.commit(role)
    yield client
    client.close()


def commit_all(solr: SolrClient) -> None:
    for role in ROLES:
        solr.commit(role)


def reader(solrcloud) -> SolrClient:
    """A client on the *read* aliases (what datastore-search queries)."""
    return SolrClient(solrcloud.url, max_retries=0, timeout_s=30)


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def through_the_stages(blobs: LocalBlobStore, doc_id: str, source: Path) -> dict[str, Any]:
    """``source`` validated (the built-in validator), cleaned, flattened and lakified as the
    pipeline does; returns the row to index."""
    hash_ = f"h-{doc_id}"
    blobs.put_bytes(SETTINGS.source_container, f"{hash_}.xml", source.read_bytes())
    row = {"id": doc_id, "hash": hash_, "name": doc_id}
    _, report = validate_file(source, meta=True)
    cleaned = clean_document(row, report, blobs, SETTINGS)
    assert cleaned.status == "ok", cleaned
    flat = flatten_document(row, blobs, SETTINGS)
    assert flat.status == "ok", flat
    lake = lakify_document(row, blobs, SETTINGS)
    assert lake.status == "ok", lake
    return {**row, "flattened_activities": flat.data["manifest"]}


# --- the configsets, aliases and what Solr accepts -------------------------------------------------------


def test_writes_go_through_the_solrize_aliases_and_readers_see_them_through_the_read_aliases(solrcloud, solr):
    listed = solr._request("GET", "admin", "collections", params={"action": "LISTALIASES", "wt": "json"})
    assert listed["aliases"] == {
        "activity": "activity_1",
        "activity_solrize": "activity_1",
        "transaction": "transaction_1",
        "transaction_solrize": "transaction_1",
        "budget": "budget_1",
        "budget_solrize": "budget_1",
    }
    assert solr.target("activity") == "activity_solrize"
    solr.add(
        "budget",
        [
            {
                "id": "b-1",
                "iati_activities_document_id": "d",
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-1",
            }
        ],
    )
    solr.commit("budget")
    with reader(solrcloud) as read:
        assert read.select("budget", field_query("id", "b-1"))["response"]["numFound"] == 1
        assert read.select("budget_1", "*:*")["response"]["numFound"] == 1


@pytest.mark.parametrize(
    "source",
    sorted(
        p.name
        for p in SAMPLE.glob("*.xml")
        if "organisation" not in p.name and "truncated" not in p.name and "v105" not in p.name
    ),
)
def test_every_document_built_from_the_sample_files_is_accepted(solrcloud, solr, blobs, source):
    row = through_the_stages(blobs, "sample", SAMPLE / source)
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert outcome.status == "ok", outcome
    commit_all(solr)
    counts = {role: solr.count(role, field_query("iati_activities_document_id", "sample")) for role in ROLES}
    assert counts["activity"] == outcome.data["activities"] > 0
    assert counts["transaction"] == outcome.data["transactions"]
    assert counts["budget"] == outcome.data["budgets"]


def test_every_field_of_a_full_flattened_activity_is_accepted_with_its_type(solr, blobs):
    """tests/fixtures/index/full-activity.json holds a value for every field the flattener
    can produce from valid IATI 2.03: Solr takes them all, typed as the configset says."""
    full = json.loads((FIXTURES / "index" / "full-activity.json").read_text(encoding="utf-8"))
    row = publish(blobs, DOC, "h1", [full])
    outcome = index_document(row, blobs, solr, SETTINGS)
    assert outcome.status == "ok", outcome
    commit_all(solr)
    [stored] = solr.select("activity", IN_DOC, fl="*")["response"]["docs"]
    date = stored["activity_date_iso_date"]
    assert isinstance(date, list) and all(v.endswith("Z") and "T" in v for v in date), f"pdate, several: {date}"
    assert isinstance(stored["budget_value"], list) and all(isinstance(v, float) for v in stored["budget_value"])
    assert isinstance(stored["hierarchy"], int), "pint, single-valued"
    assert isinstance(stored["iati_identifier"], str), "single-valued"
    assert isinstance(stored["title_narrative"], list), "multi-valued"
    missing = sorted(
        k for k, v in full.items() if v not in ("", [], None) and k not in stored and not k.startswith("@")
    )
    assert missing == [], f"every non-empty field is stored: {missing}"


def test_a_value_solr_rejects_costs_that_index_attempt_only_with_solrs_own_message(solr, blobs):
    good = publish(blobs, DOC, "h1", V1)
    assert index_document(good, blobs, solr, SETTINGS).status == "ok"
    commit_all(solr)
    before = set(solr.iter_ids("activity", IN_DOC))
    broken = [dict(a) for a in V2]
    broken[1]["budget_value"] = "twelve thousand"  # a pdouble field
    outcome = index_document(publish(blobs, DOC, "h2", broken), blobs, solr, SETTINGS)
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "solr_client", False), outcome
    assert "400" in outcome.message and "budget_value" in outcome.message and "twelve thousand" in outcome.message
    commit_all(solr)
    # Every activity of the old version is still searchable, and the ids only the new version
    # has were deleted again.  Solr kept the documents it accepted before the bad one: those
    # activities were overwritten in place (same id in every version) and show the new content.
    assert set(solr.iter_ids("activity", IN_DOC)) == before, "no activity vanished, no new-only id left"
    hashes = {
        d["id"]: d["iati_activities_document_hash"]
        for d in solr.iter_docs("activity", IN_DOC, fl="id,iati_activities_document_hash")
    }
    # Reconciliation (which trusts the database: indexed h1, current h2) keeps them all.
    assert reconcile(solr, {DOC: ("h1", "h2")}, SETTINGS)["activity"] == {
        "scanned": len(hashes),
        "orphaned": 0,
        "stale_hash": 0,
    }


# --- queries and updates ----------------------------------------------------------------------------------


def test_cursor_paging_returns_every_document_once_in_id_order(solr):
    docs = [
        {
            "id": f"p-{i:05d}",
            "iati_activities_document_id": "paging",
            "iati_activities_document_hash": "h",
            "iati_identifier": f"X-{i}",
        }
        for i in range(2345)
    ]
    for start in range(0, len(docs), 1000):
        solr.add("activity", docs[start : start + 1000])
    solr.commit("activity")
    got = list(solr.iter_ids("activity", field_query("iati_activities_document_id", "paging"), page_size=500))
    assert got == sorted(d["id"] for d in docs)


def test_delete_by_id_and_by_query_with_values_that_need_escaping(solr):
    awkward = 'org "quoted" \\ back:slash (AND) *'
    solr.add(
        "transaction",
        [
            {
                "id": "t-1",
                "iati_activities_document_id": awkward,
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-1",
            },
            {
                "id": "t-2",
                "iati_activities_document_id": awkward + " other",
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-2",
            },
            {
                "id": "t-3",
                "iati_activities_document_id": "plain",
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-3",
            },
        ],
    )
    solr.commit("transaction")
    assert solr.count("transaction", field_query("iati_activities_document_id", awkward)) == 1
    solr.delete_query("transaction", field_query("iati_activities_document_id", awkward))
    solr.delete_ids("transaction", ["t-3"])
    solr.commit("transaction")
    assert sorted(solr.iter_ids("transaction")) == ["t-2"]


def test_commit_within_makes_documents_visible_without_a_commit(solr):
    solr.add(
        "activity",
        [
            {
                "id": "cw-1",
                "iati_activities_document_id": "cw",
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-1",
            }
        ],
        commit_within_ms=500,
    )
    deadline = time.monotonic() + 20
    while solr.count("activity", field_query("id", "cw-1")) == 0:
        assert time.monotonic() < deadline, "commitWithin=500 ms did not make the document visible in 20 s"
        time.sleep(0.2)


# --- the no-gap reindex, failures and reconcile ----------------------------------------------------------------


def test_a_republished_dataset_stays_searchable_between_every_request_of_its_reindex(solrcloud, solr, blobs):
    assert index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS).status == "ok"
    commit_all(solr)
    both = set(solr.iter_ids("activity", IN_DOC)) & {
        d for d in solr.iter_ids("activity", IN_DOC) if "XM-EXAMPLE-1-A3" not in d
    }
    seen: list[tuple[int, int, int, set[str]]] = []
    with reader(solrcloud) as read:

        def look() -> None:
            commit_all(read)  # a searcher opens here, as commitWithin could open one
            seen.append(
                (
                    read.count("activity", IN_DOC),
                    read.count("transaction", IN_DOC),
                    read.count("budget", IN_DOC),
                    set(read.iter_ids("activity", IN_DOC)),
                )
            )

        solr.observe = look
        outcome = index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS)
        solr.observe = None
    assert outcome.status == "ok", outcome
    assert len(seen) >= 8
    for activities, transactions, budgets, activity_ids in seen:
        assert activities > 0 and transactions > 0 and budgets > 0
        assert len(activity_ids & both) >= 1
    commit_all(solr)
    assert {
        d["iati_activities_document_hash"]
        for role in ROLES
        for d in solr.iter_docs(role, IN_DOC, fl="id,iati_activities_document_hash")
    } == {"h2"}


def test_solr_stopped_mid_reindex_keeps_the_old_version_and_a_rerun_converges(solrcloud, solr, blobs):
    assert index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS).status == "ok"
    commit_all(solr)
    v1 = {role: set(solr.iter_ids(role, IN_DOC)) for role in ROLES}
    requests = []

    def stop_after_the_second_request() -> None:
        requests.append(1)
        if len(requests) == 2:
            solrcloud.stop_node(0)

    solr.observe = stop_after_the_second_request
    try:
        outcome = index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS)
    finally:
        solr.observe = None
        solrcloud.start_node(0)
    assert (outcome.status, outcome.retryable) == ("failed", True), outcome
    assert outcome.code in ("solr_connection", "solr_server"), outcome
    commit_all(solr)
    for role in ROLES:
        assert v1[role] <= set(solr.iter_ids(role, IN_DOC)), f"every {role} of the old version is still there"

    again = index_document(publish(blobs, DOC, "h2", V2), blobs, solr, SETTINGS)
    assert again.status == "ok", again
    commit_all(solr)
    hashes = {
        d["iati_activities_document_hash"]
        for role in ROLES
        for d in solr.iter_docs(role, IN_DOC, fl="id,iati_activities_document_hash")
    }
    assert hashes == {"h2"}, "converged: nothing of the old version or the broken attempt is left"
    assert solr.count("activity", IN_DOC) == again.data["activities"]


def test_unindex_and_reconcile(solr, blobs):
    for doc_id, hash_ in (("keep", "h1"), ("gone", "h1"), ("stale", "h-old")):
        assert index_document(publish(blobs, doc_id, hash_, V1), blobs, solr, SETTINGS).status == "ok"
    commit_all(solr)
    counts = reconcile(solr, {"keep": "h1", "stale": "h-new"}, SETTINGS, max_share=1.0)
    commit_all(solr)
    assert counts["activity"]["orphaned"] > 0 and counts["activity"]["stale_hash"] > 0, counts
    assert {d["iati_activities_document_id"] for d in solr.iter_docs("activity", fl="iati_activities_document_id")} == {
        "keep"
    }
    assert unindex_document("keep", solr, SETTINGS) > 0
    commit_all(solr)
    assert all(solr.count(role) == 0 for role in ROLES)


def test_an_unknown_collection_is_a_client_error(solr):
    with pytest.raises(SolrError) as error:
        solr.count("no_such_collection")
    assert error.value.kind == "client" and error.value.status == 404


def test_create_collections_script_runs_a_zero_downtime_full_reindex_on_real_solr(solrcloud, solr):
    """solr/create-collections.sh (what the compose stack's solr-init runs) against real Solr:
    version 2 collections from the configsets through the Configsets API, the write aliases
    moved to them while readers stay on version 1, then the read aliases moved too."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "solr" / "create-collections.sh"

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={"PATH": os.environ["PATH"], "SOLR_URL": solrcloud.url, "SOLR_WAIT_S": "30", **env},
        )

    solr.add(
        "activity",
        [
            {
                "id": "v1-doc",
                "iati_activities_document_id": "d",
                "iati_activities_document_hash": "h",
                "iati_identifier": "X-1",
            }
        ],
    )
    solr.commit("activity")
    try:
        unchanged = run()
        assert unchanged.returncode == 0, unchanged.stderr
        assert "creating" not in unchanged.stderr, "version 1 exists: nothing is created again"
        moved = run(SOLR_COLLECTION_VERSION="2", REPOINT_WRITE_ALIAS="1")
        assert moved.returncode == 0, moved.stderr
        with reader(solrcloud) as read:
            aliases = read._request("GET", "admin", "collections", params={"action": "LISTALIASES", "wt": "json"})
            assert aliases["aliases"]["activity_solrize"] == "activity_2"
            assert aliases["aliases"]["activity"] == "activity_1"
            assert read.count("activity", field_query("id", "v1-doc")) == 1, "readers still see version 1"
            solr.add(
                "activity",
                [
                    {
                        "id": "v2-doc",
                        "iati_activities_document_id": "d",
                        "iati_activities_document_hash": "h",
                        "iati_identifier": "X-1",
                    }
                ],
            )
            solr.commit("activity")
            assert read.count("activity", field_query("id", "v2-doc")) == 0
            switched = run(SOLR_COLLECTION_VERSION="2", REPOINT_READ_ALIAS="1")
            assert switched.returncode == 0, switched.stderr
            assert read.count("activity", field_query("id", "v2-doc")) == 1, "readers now see version 2"
            with pytest.raises(SolrError) as rejected:  # the uploaded schema is enforced
                solr.add(
                    "transaction",
                    [
                        {
                            "id": "t",
                            "iati_activities_document_id": "d",
                            "iati_identifier": "X-1",
                            "iati_activities_document_hash": "h",
                            "hierarchy": "top",
                        }
                    ],
                )
            assert rejected.value.status == 400 and "hierarchy" in rejected.value.message
    finally:
        for role in ROLES:  # back to version 1 for the other tests
            solr._request(
                "GET",
                "admin",
                "collections",
                params={"action": "CREATEALIAS", "name": f"{role}_solrize", "collections": f"{role}_1", "wt": "json"},
            )
            solr._request(
                "GET",
                "admin",
                "collections",
                params={"action": "CREATEALIAS", "name": role, "collections": f"{role}_1", "wt": "json"},
            )
            solr._request("GET", "admin", "collections", params={"action": "DELETE", "name": f"{role}_2", "wt": "json"})


# --- what the index stage stores, as real Solr stores it ------------------------------------------------


def test_the_documents_of_a_first_index_as_solr_stores_them(solr, blobs):
    outcome = index_document(publish(blobs, DOC, "h1", V1), blobs, solr, SETTINGS)
    assert outcome.status == "ok", outcome
    commit_all(solr)
    [a1] = solr.select("activity", field_query("iati_identifier", "XM-EXAMPLE-1-A1"), fl="*")["response"]["docs"]
    assert a1["iati_xml"].startswith("<iati-activity><iati-identifier>XM-EXAMPLE-1-A1</iati-identifier>")
    assert json.loads(a1["iati_json"])["iati-activity"][0]["n"] == 0
    assert a1["location_point_latlon"] == ["-1.2921,36.8219"], "a LatLonPoint, stored as sent; 91 10 was dropped"
    assert "capital_spend_percentage" not in a1, "an empty value is not sent (a pdouble would reject it)"
    assert a1["budget_bigorg_bigorg_finance_bigorg_applicant"] == ["extension value"], "the stored catch-all"
    assert a1["indexed_datetime"].endswith("Z"), "the schema's default NOW"
    assert a1["iati_identifier_exact"] == "XM-EXAMPLE-1-A1", "the copy field, stored as in production"
    transactions = solr.select("transaction", IN_DOC, fl="*", rows=10)["response"]["docs"]
    assert len(transactions) == 3 and not any("iati_xml" in t for t in transactions)
    assert solr.count("activity", "iati_identifier_exact:XM-EXAMPLE-1-A1") == 1


def test_a_version_without_activities_and_ids_a_version_no_longer_makes_are_removed(solr, blobs):
    row = publish(blobs, DOC, "h1", V1)
    assert index_document(row, blobs, solr, SETTINGS).status == "ok"
    assert index_document(publish(blobs, "doc-2", "x1", V1[:1]), blobs, solr, SETTINGS).status == "ok"
    solr.add(
        "transaction",
        [
            {
                "id": "old-style-id",
                "iati_activities_document_id": DOC,
                "iati_activities_document_hash": "h1",
                "iati_identifier": "X",
            }
        ],
    )
    solr.commit("transaction")
    again = index_document(row, blobs, solr, SETTINGS)
    assert again.data["removed"] == 1
    commit_all(solr)
    assert solr.count("transaction", field_query("id", "old-style-id")) == 0
    empty = index_document({"id": DOC, "hash": "h2", "flattened_activities": []}, blobs, solr, SETTINGS)
    assert (empty.status, empty.data["removed"]) == ("ok", 9)
    commit_all(solr)
    assert all(solr.count(role, IN_DOC) == 0 for role in ROLES)
    assert solr.count("activity", field_query("iati_activities_document_id", "doc-2")) == 1, "other datasets stay"


def test_a_replica_node_lost_mid_reindex_fails_over_and_recovers(tmp_path, blobs):
    """Two nodes, one replica of each collection on each: a node stops in the middle of a
    reindex.  Search never stops answering, the reindex completes (on the surviving
    replica, after the quick in-request retries ride over the leader election), and the
    restarted node's replica catches up."""
    from iati_refresher.local.solr import LocalSolrCloud

    with LocalSolrCloud(nodes=2, heap_mb=512, base_dir=tmp_path / "two-nodes") as cloud:
        client = Probe(
            cloud.url, collections=write_collections(SETTINGS), max_retries=6, retry_backoff_s=1.0, timeout_s=60
        )
        assert index_document(publish(blobs, DOC, "h1", V1), blobs, client, SETTINGS).status == "ok"
        commit_all(client)
        seen: list[int] = []
        requests: list[int] = []

        def lose_the_other_node() -> None:
            requests.append(1)
            if len(requests) == 2:
                cloud.stop_node(1)
            seen.append(client.count("activity", IN_DOC))

        client.observe = lose_the_other_node
        outcome = index_document(publish(blobs, DOC, "h2", V2), blobs, client, SETTINGS)
        client.observe = None
        assert outcome.status == "ok", outcome
        assert seen and min(seen) > 0, "search answered with the dataset throughout"
        cloud.start_node(1)
        commit_all(client)
        expected = outcome.data["activities"]
        for node in cloud.node_urls:  # each replica on its own (distrib=false)
            with SolrClient(node, max_retries=3, timeout_s=60) as direct:
                cores = direct._request("GET", "admin", "cores", params={"action": "STATUS", "wt": "json"})
                [core] = [name for name in cores["status"] if name.startswith("activity_1")]
                answer = direct.select(core, IN_DOC, rows=0, distrib="false")
                assert answer["response"]["numFound"] == expected, node
        client.close()
