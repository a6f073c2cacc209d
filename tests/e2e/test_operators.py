"""The provider's operators, each in a small DAG of its own, through ``dag.test()``, against
real services (Azurite, PostgreSQL, a real SolrCloud) and the Validator stand-in — with
connection ids of the DAG's own choosing, as any DAG would use them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pendulum
import psycopg
import pytest
from psycopg.rows import dict_row

from iati_refresher import connections
from iati_refresher.operators import IatiValidatorOperator, RefresherBlobOperator, SolrIndexOperator
from iati_refresher.sample.server import SampleRegistryServer
from iati_refresher.solr_client import ROLES, SolrClient, field_query
from iati_refresher.storage import AzureBlobStore
from tests.integration.test_index_stage import V1, publish
from tests.standins.validator_server import ValidatorStandin

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"


def run_inline(dag: Any) -> tuple[Any, dict[str, Any]]:
    """Serialise a DAG defined here (not in dags/) and run it; returns (run, {task_id: XCom})."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder="/nonexistent", collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    run = dag.test()
    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.run_id == run.run_id, XComModel.dag_id == dag.dag_id, XComModel.key == "return_value")
            .all()
        )
        results = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    return run, results


def a_dag(name: str) -> Any:
    from airflow.sdk import DAG

    return DAG(
        f"operator_{name}_{uuid.uuid4().hex[:6]}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    )


@pytest.fixture(autouse=True)
def _fresh_connections(monkeypatch):
    monkeypatch.setattr(connections, "_PRELOADED", {})


def test_the_validator_operator_validates_a_url_a_blob_and_a_file(
    airflow_metadata, azurite, monkeypatch, tmp_path
) -> None:
    valid = (SAMPLE / "meadowlark-activities.xml").read_bytes()
    container = f"uploads-{uuid.uuid4().hex[:8]}"
    AzureBlobStore(azurite.connection_string).ensure_containers([container])
    AzureBlobStore(azurite.connection_string).put_bytes(container, "upload.xml", valid)
    (tmp_path / "local.xml").write_bytes(b"<not-iati/>")
    (tmp_path / "entities.xml").write_bytes(b'<!DOCTYPE x [<!ENTITY a "b">]><iati-activities version="2.03"/>')
    with ValidatorStandin(key="op-key-5Tw") as validator, SampleRegistryServer("127.0.0.1", 0) as registry:
        monkeypatch.setenv("REFRESHER_ALLOW_PRIVATE_ADDRESSES", "true")
        monkeypatch.setenv(
            "AIRFLOW_CONN_MY_VALIDATOR",
            json.dumps(
                {
                    "conn_type": "iati_validator",
                    "host": validator.url,
                    "password": "op-key-5Tw",
                    "extra": {"key_name": validator.key_name},
                }
            ),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_MY_UPLOADS",
            json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}),
        )
        url = next(
            d["last_known_good_dataset"]["cached_dataset_url_xml"]
            for d in registry.dataset_index["datasets"]
            if "meadowlark-activities" in (d["last_known_good_dataset"]["cached_dataset_url_xml"] or "")
        )
        with a_dag("validator") as dag:
            IatiValidatorOperator(task_id="by_url", source=url, validator_conn_id="my_validator")
            IatiValidatorOperator(
                task_id="by_blob",
                source="upload.xml",
                source_type="blob",
                container=container,
                validator_conn_id="my_validator",
                blob_conn_id="my_uploads",
            )
            IatiValidatorOperator(
                task_id="by_file",
                source=str(tmp_path / "local.xml"),
                source_type="file",
                validator_conn_id="my_validator",
                meta=False,
            )
            IatiValidatorOperator(
                task_id="unreachable_url",
                source="http://127.0.0.1:9/none.xml",
                validator_conn_id="my_validator",
                fail_on_fetch_error=False,
            )
            IatiValidatorOperator(
                task_id="doctype",
                source=str(tmp_path / "entities.xml"),
                source_type="file",
                validator_conn_id="my_validator",
            )
        run, results = run_inline(dag)
    assert str(run.state).endswith("success")
    for task in ("by_url", "by_blob"):
        assert (results[task]["status"], results[task]["valid"]) == (200, True), results[task]
        assert results[task]["report"]["iati-activities"], "meta: the per-activity list"
    assert results["by_file"]["status"] == 422 and results["by_file"]["valid"] is False
    assert results["unreachable_url"]["report"] is None and "download_error" in results["unreachable_url"]["error"]
    assert results["doctype"]["report"] is None and results["doctype"]["error"].startswith("doctype_refused")
    assert len(validator.requests) == 3 and all(r.key_ok for r in validator.requests)


def test_the_blob_operator_stores_lists_fetches_and_removes(airflow_metadata, azurite, monkeypatch, tmp_path) -> None:
    container = f"ops-{uuid.uuid4().hex[:8]}"
    store = AzureBlobStore(azurite.connection_string)
    store.ensure_containers([container])
    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_STORE",
        json.dumps(
            {
                "conn_type": "wasb",
                "login": "devstoreaccount1",
                "password": azurite.connection_string.split("AccountKey=")[1].split(";")[0],
                "host": f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1",
            }
        ),
    )
    (tmp_path / "in.xml").write_bytes(b"<a/>")
    with a_dag("blob") as dag:
        put = RefresherBlobOperator(
            task_id="store",
            action="store",
            container=container,
            name="x/in.xml",
            path=str(tmp_path / "in.xml"),
            blob_conn_id="my_store",
        )
        put2 = RefresherBlobOperator(
            task_id="store_data",
            action="store",
            container=container,
            name="x/two.xml",
            data=b"<b/>",
            blob_conn_id="my_store",
        )
        listed = RefresherBlobOperator(
            task_id="list", action="list", container=container, prefix="x/", blob_conn_id="my_store"
        )
        fetched = RefresherBlobOperator(
            task_id="fetch",
            action="fetch",
            container=container,
            name="x/two.xml",
            path=str(tmp_path / "out.xml"),
            blob_conn_id="my_store",
        )
        removed = RefresherBlobOperator(
            task_id="remove",
            action="remove",
            container=container,
            names=["x/in.xml", "x/absent.xml"],
            blob_conn_id="my_store",
        )
        [put, put2] >> listed >> fetched >> removed
    run, results = run_inline(dag)
    assert str(run.state).endswith("success")
    assert sorted(results["list"]) == ["x/in.xml", "x/two.xml"]
    assert results["fetch"] == 4 and (tmp_path / "out.xml").read_bytes() == b"<b/>"
    assert results["remove"] == 1
    assert list(store.list(container)) == ["x/two.xml"]


@pytest.mark.solr
def test_the_solr_operator_indexes_and_removes_datasets_recording_each_outcome(
    airflow_metadata, refresher_env, solrcloud, monkeypatch
) -> None:
    from iati_refresher.settings import get_settings
    from iati_refresher.storage import LocalBlobStore

    db = refresher_env["AIRFLOW_CONN_REFRESHER_DB"]
    monkeypatch.setenv("AIRFLOW_CONN_MY_SOLR", json.dumps({"conn_type": "iati_solr", "host": solrcloud.url}))
    settings = get_settings()
    blobs = LocalBlobStore(settings.local_blob_dir)
    row = publish(blobs, "op-doc", "h1", V1)
    with psycopg.connect(db, row_factory=dict_row) as conn:
        conn.execute("INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o','p','P',now(),now())")
        conn.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, downloaded, validation,
                            clean_end, flatten_end, lakify_end, flattened_activities, activity_count)
                        VALUES ('op-doc', 'h1', 'u', now(), now(), 'o', now(), NULL, now(), now(), now(), %s, 4)""",
            (json.dumps(row["flattened_activities"]),),
        )
    with SolrClient(solrcloud.url) as solr:
        for role in ROLES:
            solr.delete_query(f"{role}_solrize", "*:*")
            solr.commit(f"{role}_solrize")
    with a_dag("solr") as dag:
        index = SolrIndexOperator(task_id="index", dataset_ids=["op-doc"], solr_conn_id="my_solr")
        remove = SolrIndexOperator(task_id="remove", action="remove", dataset_ids=["op-doc"], solr_conn_id="my_solr")
        index >> remove
    with SolrClient(solrcloud.url) as solr:
        seen_before_removal: list[int] = []
        original = SolrIndexOperator.execute

        def watching(self, context):  # what search showed between the two tasks
            if self.action == "remove":
                for role in ROLES:
                    solr.commit(f"{role}_solrize")
                seen_before_removal.append(
                    sum(solr.count(role, field_query("iati_activities_document_id", "op-doc")) for role in ROLES)
                )
            return original(self, context)

        monkeypatch.setattr(SolrIndexOperator, "execute", watching)
        run, results = run_inline(dag)
        assert str(run.state).endswith("success")
        assert results["index"]["documents_ok"] == 1 and results["index"]["stage"] == "index"
        assert seen_before_removal[0] > 3, "the index task made the dataset's activities and more searchable"
        assert results["remove"] == seen_before_removal[0]
        solr.commit("activity_solrize")
        assert solr.count("activity", field_query("iati_activities_document_id", "op-doc")) == 0
    with psycopg.connect(db, row_factory=dict_row) as conn:
        doc = conn.execute("SELECT solrize_end, solr_indexed_hash FROM document WHERE id = 'op-doc'").fetchone()
        stage = conn.execute(
            "SELECT outcome FROM document_stage WHERE document_id = 'op-doc' AND stage = 'index'"
        ).fetchone()
    assert doc["solrize_end"] is not None and doc["solr_indexed_hash"] is None, "indexed, then removed"
    assert stage["outcome"] == "ok"
