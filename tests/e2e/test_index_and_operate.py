"""Indexing, operator re-runs, reconciliation and alerts through the real DAGs.

Real PostgreSQL and a local blob directory; loopback stand-ins for the registry, Solr
(checking every document against the project's own configsets) and Slack.  The built-in
validator is used (no validator connection), as on a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from iati_refresher.settings import get_settings
from iati_refresher.storage import LocalBlobStore
from tests.standins.registry_server import RegistryStandIn, bds_dataset, bds_org
from tests.standins.slack_server import SlackWebhookServer
from tests.standins.solr_server import SolrStandin
from tests.support import services

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"
ORG = "cccccccc-0000-4000-8000-00000000000c"
COLLECTIONS = ("activity", "transaction", "budget")


class Env:
    def __init__(self, registry: RegistryStandIn, solr: SolrStandin, slack: SlackWebhookServer, conninfo: str):
        self.registry, self.solr, self.slack, self.conninfo = registry, solr, slack, conninfo
        self.blobs = LocalBlobStore(get_settings().local_blob_dir)
        self.datasets: dict[str, dict] = {}

    def publish(self, doc_id: str, name: str, data: bytes) -> None:
        url, hash_ = self.registry.add_dataset_file(f"{doc_id}-{len(self.registry.files)}.xml", data)
        self.datasets[doc_id] = bds_dataset(doc_id, name, ORG, cached_url=url, hash_=hash_)

    def serve(self, stamp: int) -> None:
        self.registry.set_bds([bds_org(ORG, "org-c")], list(self.datasets.values()), index_created=stamp)

    def rows(self, sql: str, *args) -> list[dict]:
        with psycopg.connect(self.conninfo, row_factory=dict_row) as conn:
            return conn.execute(sql, args).fetchall()

    def doc(self, doc_id: str) -> dict:
        return self.rows("SELECT * FROM document WHERE id = %s", doc_id)[0]

    def solr_docs(self, collection: str, doc_id: str) -> list[dict]:
        return self.solr.docs(collection, f'iati_activities_document_id:"{doc_id}"')


@pytest.fixture
def env(refresher_env, pg_dbname, monkeypatch):
    with (
        RegistryStandIn() as registry,
        SolrStandin(auth=("indexer", "s3cret-solr")) as solr,
        SlackWebhookServer() as slack,
    ):
        monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", registry.url)
        monkeypatch.setenv(
            "AIRFLOW_CONN_SOLR",
            json.dumps({"conn_type": "http", "host": solr.base_url, "login": "indexer", "password": "s3cret-solr"}),
        )
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ONCALL", slack.connection_json())
        yield Env(registry, solr, slack, services.conninfo(pg_dbname))


def test_index_reindex_remove_reconcile_and_reprocess(env: Env, run_dag, monkeypatch) -> None:
    valid = (SAMPLE / "meadowlark-activities.xml").read_bytes()
    env.publish("d-valid", "org-c-valid", valid)
    env.publish("d-mixed", "org-c-mixed", (SAMPLE / "meadowlark-mixed.xml").read_bytes())
    env.publish("d-es", "org-c-es", (SAMPLE / "condor-verde-actividades.xml").read_bytes())
    env.serve(1)
    monkeypatch.setenv("REFRESHER_SAFETY_CHECK_PERIOD_S", "0")  # clean the mixed file now, not in 2 h

    run, states = run_dag("iati_refresh")
    assert str(run.state).endswith("success"), states

    # --- every dataset searchable, with the documents the reference builds --------------------
    for doc_id in ("d-valid", "d-mixed", "d-es"):
        row = env.doc(doc_id)
        activities = env.solr_docs("activity", doc_id)
        assert len(activities) == row["activity_count"] == row["solr_activity_count"] > 0, doc_id
        assert row["solr_indexed_hash"] == row["hash"] and row["solrize_end"] and row["last_solrize_end"]
        for a in activities:
            assert a["id"].startswith(f"{doc_id}--") and a["iati_activities_document_hash"] == row["hash"]
            assert a["iati_xml"].startswith("<iati-activity") and json.loads(a["iati_json"])["iati-activity"]
    assert env.solr_docs("transaction", "d-valid"), "transactions exploded into their own collection"
    assert len(env.solr_docs("activity", "d-mixed")) == 2, "only the schema-valid activities are searchable"

    # --- a republished dataset replaces its old version; a removed one leaves -----------------
    first_id = env.solr_docs("activity", "d-valid")[0]["id"]
    text = valid.decode("utf-8")
    start = text.index("<iati-activity ", text.index("<iati-activity ") + 1)
    end = text.index("</iati-activity>", start) + len("</iati-activity>")
    env.publish("d-valid", "org-c-valid", (text[:start] + text[end:]).encode("utf-8"))  # one activity fewer
    del env.datasets["d-mixed"]
    env.serve(2)
    run2, states2 = run_dag("iati_refresh")
    assert str(run2.state).endswith("success"), states2
    v2 = env.doc("d-valid")
    now_indexed = env.solr_docs("activity", "d-valid")
    assert len(now_indexed) == v2["activity_count"] == len(env.solr_docs("activity", "d-valid")) > 0
    assert {d["iati_activities_document_hash"] for d in now_indexed} == {v2["hash"]}
    assert first_id in {d["id"] for d in now_indexed}, "an unchanged activity keeps its id"
    for collection in COLLECTIONS:
        assert env.solr_docs(collection, "d-mixed") == [], f"removed dataset still in {collection}"
        assert {d["iati_activities_document_hash"] for d in env.solr_docs(collection, "d-valid")} <= {v2["hash"]}

    # --- Solr down while a changed dataset is indexed: the old version stays searchable -------
    before = {d["id"] for d in env.solr_docs("activity", "d-es")}
    es = (SAMPLE / "condor-verde-actividades.xml").read_text(encoding="utf-8")
    env.publish("d-es", "org-c-es", es.replace("</iati-activities>", "<!-- v2 --></iati-activities>").encode())
    env.serve(3)
    env.solr.fail_next(50, 503, updates_only=True)
    run_dag("iati_refresh")
    assert {d["id"] for d in env.solr_docs("activity", "d-es")} == before
    failed = env.rows("SELECT * FROM document_stage WHERE document_id = 'd-es' AND stage = 'index'")[0]
    assert failed["outcome"] == "failed" and failed["next_attempt_at"] is not None
    assert env.doc("d-es")["solr_api_error"]
    env.solr.clear_faults()
    env.rows("UPDATE document_stage SET next_attempt_at = now() AT TIME ZONE 'UTC' RETURNING 1")
    run4, states4 = run_dag("iati_refresh")
    assert str(run4.state).endswith("success"), states4
    es_row = env.doc("d-es")
    assert es_row["solr_indexed_hash"] == es_row["hash"] and es_row["solr_api_error"] is None
    assert {d["iati_activities_document_hash"] for d in env.solr_docs("activity", "d-es")} == {es_row["hash"]}

    # --- reconciliation removes orphans from Solr and storage --------------------------------
    env.solr.cores["activity"]["ghost--0--0"] = {
        "id": "ghost--0--0",
        "iati_activities_document_id": "ghost",
        "iati_activities_document_hash": "0" * 40,
    }
    settings = get_settings()
    env.blobs.put_bytes(settings.source_container, "f" * 40 + ".xml", b"<orphan/>")
    run5, states5 = run_dag("iati_reconcile")
    assert str(run5.state).endswith("success"), states5
    assert "ghost--0--0" not in env.solr.ids("activity")
    assert not env.blobs.exists(settings.source_container, "f" * 40 + ".xml")
    assert env.solr_docs("activity", "d-valid"), "reconciliation never touches current data"

    # --- operator re-run: a dry run changes nothing, a real run re-indexes ----------------------
    indexed_at = env.doc("d-valid")["solrize_end"]
    dry, dry_states = run_dag("iati_reprocess", {"datasets": ["org-c-valid"], "from_stage": "index"})
    assert str(dry.state).endswith("success"), dry_states
    assert dry_states["reset"].endswith("skipped") and dry_states["process"].endswith("skipped")
    assert env.doc("d-valid")["solrize_end"] == indexed_at
    real, real_states = run_dag(
        "iati_reprocess", {"datasets": ["org-c-valid"], "from_stage": "index", "dry_run": False}
    )
    assert str(real.state).endswith("success"), real_states
    assert env.doc("d-valid")["solrize_end"] > indexed_at
    assert len(env.solr_docs("activity", "d-valid")) == env.doc("d-valid")["activity_count"]

    # --- a new version that is not IATI any more withdraws the old one from search -------------
    env.publish("d-es", "org-c-es", b"<html><body>Service unavailable</body></html>")
    env.serve(4)
    run6, states6 = run_dag("iati_refresh")
    assert str(run6.state).endswith("success"), states6
    assert env.doc("d-es")["solr_indexed_hash"] is None
    for collection in COLLECTIONS:
        assert env.solr_docs(collection, "d-es") == [], f"stale version still searchable in {collection}"

    # --- no credential leaks into the database or task results --------------------------------
    assert not env.rows("SELECT 1 FROM document WHERE solr_api_error LIKE '%%s3cret%%'")
    assert not env.rows("SELECT 1 FROM document_stage WHERE message LIKE '%%s3cret%%'")


def test_a_failed_run_pages_once_with_the_details(env: Env, run_dag, monkeypatch) -> None:
    """The summary fails a run whose sync was refused and pages once, with the reason and the
    log link; the DAG-level callback then stays quiet (no second page for the same run)."""
    for n in range(4):
        env.publish(f"d{n}", f"org-c-{n}", (SAMPLE / "meadowlark-activities.xml").read_bytes())
    env.serve(1)
    monkeypatch.setenv("REFRESHER_SAFETY_CHECK_PERIOD_S", "0")
    run, states = run_dag("iati_refresh")
    assert str(run.state).endswith("success"), states
    assert env.slack.messages == []
    for n in range(3):
        del env.datasets[f"d{n}"]
    env.serve(2)
    run2, _ = run_dag("iati_refresh")
    assert str(run2.state).endswith("failed")
    texts = [m.text for m in env.slack.messages]
    assert len(texts) == 1, texts
    assert texts[0].startswith(f":red_circle: *iati_refresh* run `{run2.run_id}` failed: registry sync refused")
    assert "/tasks/summary|View log>" in texts[0]
