"""``iati_refresh`` through ``dag.test()`` on the sample registry, indexing into a real
SolrCloud (``solr/runner``): what ``make run`` shows a newcomer, checked by Solr queries."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.rows import dict_row

from iati_refresher.sample.server import SampleRegistryServer
from iati_refresher.solr_client import ROLES, SolrClient, field_query

pytestmark = [pytest.mark.e2e, pytest.mark.solr]


@pytest.fixture
def searchable(solrcloud) -> SolrClient:
    client = SolrClient(solrcloud.url, max_retries=1, timeout_s=60)
    for role in ROLES:
        client.delete_query(f"{role}_solrize", "*:*")
        client.commit(f"{role}_solrize")
    yield client
    client.close()


def test_the_sample_registry_ends_up_searchable_in_solr(refresher_env, run_dag, solrcloud, searchable, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SOLR", json.dumps({"conn_type": "http", "host": solrcloud.url}))
    monkeypatch.setenv("REFRESHER_SAFETY_CHECK_PERIOD_S", "0")
    monkeypatch.setenv("REFRESHER_SOLR_COMMIT_WITHIN_MS", "500")
    with SampleRegistryServer("127.0.0.1", 0) as registry:
        monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", registry.url)
        run, states = run_dag("iati_refresh")
        assert str(run.state).endswith("success"), states
        for role in ROLES:
            searchable.commit(role)
        with psycopg.connect(refresher_env["AIRFLOW_CONN_REFRESHER_DB"], row_factory=dict_row) as conn:
            indexed = conn.execute("""SELECT id, hash, solr_activity_count FROM document
                                       WHERE solr_indexed_hash = hash AND solrize_end IS NOT NULL""").fetchall()
        assert len(indexed) == 4, "the four files with valid 2.x activities"
        total = sum(r["solr_activity_count"] for r in indexed)
        assert total == searchable.count("activity") == 6
        for row in indexed:
            in_doc = field_query("iati_activities_document_id", row["id"])
            assert searchable.count("activity", in_doc) == row["solr_activity_count"]
            assert {
                d["iati_activities_document_hash"]
                for d in searchable.iter_docs("activity", in_doc, fl="id,iati_activities_document_hash")
            } == {row["hash"]}
        assert searchable.count("transaction") > 0 and searchable.count("budget") > 0
        hits = searchable.select("activity", "iati_text:water", fl="iati_identifier,iati_xml")["response"]
        assert hits["numFound"] >= 1 and hits["docs"][0]["iati_xml"].startswith("<iati-activity")
        spanish = searchable.select("activity", "iati_text:quinua")["response"]["numFound"]
        assert spanish >= 1, "the Spanish file (condor-verde) is searchable in its own words"

        again, states = run_dag("iati_refresh")
        assert str(again.state).endswith("success"), states
        assert searchable.count("activity") == 6, "a second run changes nothing in Solr"
