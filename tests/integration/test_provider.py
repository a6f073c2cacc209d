"""The package as an Airflow provider: its connection types are registered with their
forms, and every connection the pipeline uses passes Airflow's connection test against its
real service (and fails it, with the reason, when the service is away) — the path of the
UI's Test button: a transient connection in the environment, ``Connection.test_connection()``."""

from __future__ import annotations

import json
import uuid

import pytest

from iati_refresher.sample.server import SampleRegistryServer
from tests.standins.commshub_server import CommsHubStandin
from tests.standins.validator_server import ValidatorStandin
from tests.support import services


def test_the_provider_registers_its_connection_types_with_their_forms() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "iati-refresher" in manager.providers
    expected = {
        "iati_validator": "iati_refresher.hooks.validator.IatiValidatorHook",
        "iati_solr": "iati_refresher.hooks.solr.SolrHook",
        "iati_registry": "iati_refresher.hooks.registry.IatiRegistryHook",
        "iati_commshub": "iati_refresher.hooks.commshub.CommsHubHook",
    }
    for conn_type, hook_class in expected.items():
        assert manager.hooks[conn_type].hook_class_name == hook_class
        assert manager.field_behaviours[conn_type]["relabeling"]["host"]
    assert "extra__iati_validator__key_name" in manager.connection_form_widgets
    for conn_type in ("wasb", "postgres"):  # the providers the refresher's storage and database use
        assert manager.hooks[conn_type] is not None


def airflow_test(conn_type: str, monkeypatch, **fields) -> tuple[bool, str]:
    """What the UI's Test button does with a connection typed into the form."""
    from airflow.models.connection import Connection

    conn_id = f"t{uuid.uuid4().hex[:10]}"
    if isinstance(fields.get("extra"), dict):
        fields["extra"] = json.dumps(fields["extra"])
    conn = Connection(conn_id=conn_id, conn_type=conn_type, **fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn.get_uri())
    return conn.test_connection()


def test_the_validator_connection(monkeypatch) -> None:
    with ValidatorStandin(key="k3y-for-test") as validator:
        ok, message = airflow_test(
            "iati_validator",
            monkeypatch,
            host=validator.url,
            password="k3y-for-test",
            extra={"key_name": validator.key_name},
        )
        assert ok, message
        assert message.startswith("IATI Validator API")
        ok, message = airflow_test(
            "iati_validator", monkeypatch, host=validator.url, password="wrong", extra={"key_name": validator.key_name}
        )
        assert not ok and ("401" in message or "403" in message), message
    ok, message = airflow_test("iati_validator", monkeypatch, host=f"http://127.0.0.1:{services.free_port()}")
    assert not ok and "ConnectError" in message


@pytest.mark.solr
def test_the_solr_connection(monkeypatch, solrcloud) -> None:
    ok, message = airflow_test("iati_solr", monkeypatch, host=solrcloud.url)
    assert ok, message
    assert "activity_solrize" in message and "budget_solrize" in message
    ok, message = airflow_test("iati_solr", monkeypatch, host=f"http://127.0.0.1:{services.free_port()}/solr")
    assert not ok and "connection" in message


def test_the_registry_connection(monkeypatch) -> None:
    monkeypatch.setenv("REFRESHER_ALLOW_PRIVATE_ADDRESSES", "true")
    with SampleRegistryServer("127.0.0.1", 0) as registry:
        ok, message = airflow_test("iati_registry", monkeypatch, host=registry.url)
        assert ok, message
        assert "HTTP 200" in message and "ETag" in message
        ok, message = airflow_test(
            "iati_registry", monkeypatch, host=registry.url, extra={"dataset_index_path": "/nothing-here"}
        )
        assert not ok and "404" in message


def test_the_blob_storage_connection_is_the_azure_providers(monkeypatch, azurite) -> None:
    ok, message = airflow_test("wasb", monkeypatch, extra={"connection_string": azurite.connection_string})
    assert ok, message


def test_the_refresher_database_connection_is_the_postgres_providers(monkeypatch, pg_dbname) -> None:
    uri = services.airflow_uri(pg_dbname)
    from airflow.models.connection import Connection

    conn = Connection(uri=uri)
    ok, message = airflow_test(
        "postgres", monkeypatch, host=conn.host, port=conn.port, login=conn.login, schema=conn.schema
    )
    assert ok, message


def test_every_extra_of_the_refresher_db_connection_reaches_libpq(monkeypatch, pg_dbname) -> None:
    """PostgresHook passes the extras on; ours add keep-alives and the application name only
    where the connection does not set them."""
    from iati_refresher import connections
    from iati_refresher.db.connection import open_refresher_db

    base = services.airflow_uri(pg_dbname)
    monkeypatch.setattr(connections, "_PRELOADED", {})
    monkeypatch.setenv(
        "AIRFLOW_CONN_REFRESHER_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": int(base.rsplit(":", 1)[1].split("/")[0]),
                "login": "postgres",
                "schema": pg_dbname,
                "extra": {
                    "options": "-c statement_timeout=4321 -c lock_timeout=1234",
                    "application_name": "extras-probe",
                    "target_session_attrs": "read-write",
                    "sslmode": "disable",
                    "keepalives_idle": 33,
                },
            }
        ),
    )
    conn = open_refresher_db()
    try:
        settings = {
            r["name"]: r["setting"]
            for r in conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', "
                "'application_name', 'TimeZone')"
            )
        }
        assert settings == {
            "statement_timeout": "4321",
            "lock_timeout": "1234",
            "application_name": "extras-probe",
            "TimeZone": "UTC",
        }
        assert conn.info.get_parameters().get("application_name") == "extras-probe"
        assert "keepalives_idle=33" in conn.info.dsn and "sslmode=disable" in conn.info.dsn
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}, "dict rows"
    finally:
        conn.close()


def test_the_communications_hub_connection_is_tested_without_posting_a_notice(monkeypatch) -> None:
    with CommsHubStandin(key="hub-key-9") as hub:
        ok, message = airflow_test("iati_commshub", monkeypatch, host=hub.url, password="hub-key-9")
        assert ok and "204" in message, message
        ok, message = airflow_test("iati_commshub", monkeypatch, host=hub.url, password="wrong")
        assert not ok and "401" in message, message
        assert hub.methods == ["OPTIONS", "OPTIONS"] and not hub.notices, "the test never posts a notice"
    ok, message = airflow_test("iati_commshub", monkeypatch, host=f"http://127.0.0.1:{services.free_port()}/x")
    assert not ok and "ConnectError" in message
