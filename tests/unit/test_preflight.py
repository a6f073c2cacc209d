"""The preflight task: a deployment that cannot work is refused before the run does anything."""

from __future__ import annotations

import json
import logging

import pytest

from iati_refresher import connections, pipeline
from iati_refresher.settings import Settings

AZURE = json.dumps(
    {
        "conn_type": "wasb",
        "extra": {
            "connection_string": (
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
            )
        },
    }
)


@pytest.fixture(autouse=True)
def _no_connections(monkeypatch):
    monkeypatch.setattr(connections, "_PRELOADED", {})
    for conn_id in connections.ALL_CONNECTION_IDS:
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id.upper()}", raising=False)


@pytest.mark.parametrize(
    "executor",
    [
        "CeleryExecutor",
        "KubernetesExecutor",
        "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
        "LocalExecutor,CeleryExecutor",
    ],
)
def test_a_local_blob_directory_is_refused_under_a_distributed_executor(executor, tmp_path) -> None:
    settings = Settings(embedded=True, local_blob_dir=str(tmp_path))
    with pytest.raises(pipeline.PreflightFailed) as refused:
        pipeline.preflight(settings, executor=executor)
    message = str(refused.value)
    assert str(tmp_path) in message and "refresher_blob" in message and "REFRESHER_LOCAL_BLOB_DIR_SHARED" in message


@pytest.mark.parametrize("executor", ["LocalExecutor", "", "airflow.executors.local_executor.LocalExecutor"])
def test_a_local_blob_directory_is_fine_on_one_machine(executor, tmp_path) -> None:
    backends = pipeline.preflight(Settings(embedded=True, local_blob_dir=str(tmp_path)), executor=executor)
    assert backends["storage"] == f"local directory {tmp_path}"


def test_a_shared_directory_or_azure_storage_passes_under_celery(tmp_path, monkeypatch) -> None:
    shared = Settings(embedded=True, local_blob_dir=str(tmp_path), local_blob_dir_shared=True)
    assert pipeline.preflight(shared, executor="CeleryExecutor")["storage"].startswith("local directory")
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_BLOB", AZURE)
    backends = pipeline.preflight(Settings(embedded=True), executor="CeleryExecutor")
    assert backends["storage"] == "azure blob storage at http://127.0.0.1:10000/devstoreaccount1"


def test_the_log_names_every_stage_backend_without_secrets(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SOLR",
        json.dumps(
            {"conn_type": "http", "host": "http://solr:8983/solr", "login": "indexer", "password": "s3cret-solr"}
        ),
    )
    with caplog.at_level(logging.INFO, logger="iati_refresher.pipeline"):
        backends = pipeline.preflight(Settings(embedded=True, local_blob_dir=str(tmp_path)), executor="LocalExecutor")
    assert backends["validator"] == "built-in schema validator"
    assert backends["index"] == "Solr at http://solr:8983/solr"
    assert backends["alerts"].startswith("NOT CONFIGURED: failures are only logged")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for what in ("executor", "storage", "registry", "validator", "index", "alerts"):
        assert f"preflight: {what}" in text
    assert "s3cret-solr" not in text and "indexer" not in text


def test_a_deployment_missing_a_connection_fails_before_anything_runs(tmp_path, monkeypatch) -> None:
    """Outside an embedded run a missing connection never switches to a local default: the
    preflight names everything that is missing."""
    with pytest.raises(pipeline.PreflightFailed) as refused:
        pipeline.preflight(Settings(local_blob_dir=str(tmp_path)), executor="LocalExecutor")
    message = str(refused.value)
    for conn_id in ("refresher_blob", "iati_validator", "solr"):
        assert f"no '{conn_id}' connection" in message
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_BLOB", AZURE)
    monkeypatch.setenv("AIRFLOW_CONN_SOLR", json.dumps({"conn_type": "iati_solr", "host": "http://solr:8983/solr"}))
    backends = pipeline.preflight(Settings(validator_backend="builtin"), executor="CeleryExecutor")
    assert backends["kind"] == "deployment"
    assert backends["validator"] == "built-in schema validator", "chosen on purpose, not a fallback"
