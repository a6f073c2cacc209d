"""Connection lookups: Airflow's order and masking in Airflow's processes, "not found" the only
"not configured", and the CLI's own parser agreeing with Airflow's ``Connection``."""

from __future__ import annotations

import json

import pytest

from iati_refresher import connections
from iati_refresher.connections import ConnectionInfo, ConnectionLookupFailed, get_connection, parse_connection

URIS = [
    "postgresql://user:p%40ss@db.example.org:5432/refresher?sslmode=require&connect_timeout=5",
    "postgres://u:pw@[::1]:5432/db",
    "postgresql://u:pw@%5B2001%3Adb8%3A%3A1%5D:6432/db",
    "postgresql://u@[fe80::1%25eth0]:5432/db",
    "http://https%3A%2F%2Fbulk-data.iatistandard.org%2Fapi",
    "http://https://bulk-data.iatistandard.org/api",
    "iati-validator://:KEY@api.iatistandard.org/validator?key_name=Ocp-Apim-Subscription-Key",
    "wasb://devstoreaccount1:a%2Bkey%3D%3D@http%3A%2F%2F127.0.0.1%3A10000%2Fdevstoreaccount1"
    "?connection_string=DefaultEndpointsProtocol%3Dhttp%3BAccountName%3Ddevstoreaccount1",
    "solr://indexer:s%20p%C3%A4ss@solr:8983/solr",
    "solr://:@solr/?timeout=30&verify=false",
    "http://host/path?__extra__=%7B%22a%22%3A+1%2C+%22b%22%3A+%5B1%2C2%5D%7D",
    "http://user@host",
    "http://Example.ORG:8080/Path",
    "postgresql://@localhost/db",
]
JSONS = [
    '{"conn_type": "wasb", "login": "acct", "password": "k", "host": "http://127.0.0.1:10000/acct", '
    '"extra": {"sas_token": "sv=1&sig=x"}}',
    '{"conn_type": "postgres", "host": "::1", "port": 5432, "login": "u", "password": "p@ss", "schema": "db", '
    '"extra": "{\\"sslmode\\": \\"disable\\"}"}',
    '{"conn_type": "iati_solr", "host": "https://example.org/solr"}',
]


def _fields(conn) -> tuple:
    if isinstance(conn, connections.ConnectionInfo):
        return conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra
    return (
        conn.conn_type or "",
        conn.host or "",
        conn.port,
        conn.login or "",
        conn.password or "",
        conn.schema or "",
        conn.extra_dejson,
    )


@pytest.mark.parametrize("value", URIS + JSONS)
def test_the_cli_parser_agrees_with_airflow(value: str) -> None:
    from airflow.sdk.definitions.connection import Connection

    theirs = Connection.from_json(value, conn_id="x") if value.startswith("{") else Connection.from_uri(value, "x")
    assert _fields(parse_connection("x", value)) == _fields(theirs)


@pytest.fixture
def vault(monkeypatch):
    """Configure a secrets backend for this test (and forget it afterwards)."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    def configure(name: str) -> None:
        monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", f"tests.support.secrets.{name}")
        clear_secrets_backends_cache()

    monkeypatch.setattr(connections, "_PRELOADED", {})
    yield configure
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND", raising=False)
    clear_secrets_backends_cache()


def test_in_airflow_the_lookup_follows_airflows_order_and_masks_the_secret(monkeypatch, vault) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    monkeypatch.setenv(
        "AIRFLOW_CONN_SOLR",
        json.dumps(
            {
                "conn_type": "iati_solr",
                "host": "http://solr:8983/solr",
                "login": "indexer",
                "password": "masked-pw-8Jq2",
            }
        ),
    )
    conn = get_connection("solr")
    assert (conn.host, conn.password) == ("http://solr:8983/solr", "masked-pw-8Jq2")
    assert "masked-pw-8Jq2" not in str(redact("the password is masked-pw-8Jq2"))
    assert get_connection("no_such_connection") is None, "not found: not configured"


def test_a_backend_that_denies_access_fails_the_lookup_loudly(monkeypatch, vault) -> None:
    vault("DenyingVault")
    monkeypatch.setenv("AIRFLOW_CONN_SOLR", json.dumps({"conn_type": "iati_solr", "host": "http://solr:8983/solr"}))
    with pytest.raises(ConnectionLookupFailed, match="denied by policy") as failed:
        get_connection("solr")
    assert failed.value.conn_id == "solr" and "retry" in str(failed.value)


def test_an_unreachable_backend_is_not_found_and_so_never_a_silent_default(monkeypatch, vault, tmp_path) -> None:
    """Airflow itself turns a failing backend into "not found"; outside an embedded run that
    is a missing connection (the preflight names it), never the local directory."""
    from iati_refresher.connections import ConnectionMissing
    from iati_refresher.settings import Settings
    from iati_refresher.storage import blob_config_for

    vault("UnreachableVault")
    monkeypatch.delenv("AIRFLOW_CONN_REFRESHER_BLOB", raising=False)
    assert get_connection("refresher_blob") is None
    with pytest.raises(ConnectionMissing, match="refresher_blob"):
        blob_config_for(Settings(local_blob_dir=str(tmp_path)))


def test_the_cli_reads_the_environment_only(monkeypatch) -> None:
    monkeypatch.setattr(connections, "_ENVIRONMENT_ONLY", True)
    monkeypatch.setattr(connections, "_PRELOADED", {})
    monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", "http://https%3A%2F%2Fbds.example.org")
    assert get_connection("iati_registry").host == "https://bds.example.org"


@pytest.mark.parametrize(
    ("host", "port", "schema", "url"),
    [
        ("solr", 8983, "solr", "http://solr:8983/solr"),
        ("http://solr", 8983, "solr", "http://solr:8983/solr"),  # the UI's form: URL and port apart
        ("http://solr:8984/solr", 8983, "", "http://solr:8984/solr"),  # a port in the URL wins
        ("https://api.example.org/validator", None, "", "https://api.example.org/validator"),
        ("[::1]", 8080, "", "http://[::1]:8080"),
    ],
)
def test_the_base_url_of_an_http_style_connection(host: str, port: int | None, schema: str, url: str) -> None:
    assert ConnectionInfo(conn_id="x", conn_type="iati_solr", host=host, port=port, schema=schema).base_url() == url
