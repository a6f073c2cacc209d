"""Blob storage without a secret in the connection: WasbHook's ``DefaultAzureCredential``
path (managed identity, workload identity, the environment — the normal choice on Azure),
exercised with azure-identity's environment credential, and the service-principal path.

The tokens come from a loopback stand-in for Microsoft Entra ID (:mod:`tests.support.entra`),
over HTTPS; Azurite runs in HTTPS with its OAuth mode, which accepts a Bearer token only
when its issuer, audience and lifetime pass.  Both the Airflow process (WasbHook) and the
stage worker processes (the light path, no Airflow import) are exercised."""

from __future__ import annotations

import uuid

import httpx
import pytest

from iati_refresher import storage
from iati_refresher.connections import ConnectionInfo
from iati_refresher.storage import BlobStorageError, BlobStoreConfig, open_blob_store
from tests.support import services
from tests.support.blobs import round_trip
from tests.support.entra import EntraStandin, self_signed_certificate

CLIENT_ID = "5d1c6f0e-3a49-4c0b-9a57-refresher01"
CLIENT_SECRET = "entra-secret-Qm2x"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def oauth_azurite(tls):
    azurite = services.Azurite(https=tls).start()
    yield azurite
    azurite.stop()


@pytest.fixture
def entra(tls, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))  # trust the loopback certificate
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
        "AZURE_AUTHORITY_HOST",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    with EntraStandin(*tls, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as standin:
        yield standin


def use_environment_credential(monkeypatch, entra: EntraStandin, secret: str = CLIENT_SECRET) -> None:
    """What a workload's environment holds for azure-identity's EnvironmentCredential."""
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", secret)
    monkeypatch.setenv("AZURE_TENANT_ID", "adfs")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.authority_host)


@pytest.mark.parametrize("light", [False, True], ids=["WasbHook", "worker process"])
def test_a_connection_without_a_secret_authenticates_through_default_azure_credential(
    oauth_azurite, entra, monkeypatch, light: bool
) -> None:
    monkeypatch.setattr(storage, "LIGHT_CLIENTS", [light])
    use_environment_credential(monkeypatch, entra)
    conn = ConnectionInfo("refresher_blob", "wasb", host=oauth_azurite.account_url)
    round_trip(BlobStoreConfig(backend="azure", connection=conn, retry_total=0), prefix="mi")
    assert entra.token_requests, "the token came from the identity provider"
    assert {r["scope"] for r in entra.token_requests} == {"https://storage.azure.com/.default"}
    assert {r["client_id"] for r in entra.token_requests} == {CLIENT_ID}


@pytest.mark.parametrize("light", [False, True], ids=["WasbHook", "worker process"])
def test_a_service_principal_connection_authenticates_with_its_own_secret(
    oauth_azurite, entra, monkeypatch, light: bool
) -> None:
    monkeypatch.setattr(storage, "LIGHT_CLIENTS", [light])
    conn = ConnectionInfo(
        "refresher_blob",
        "wasb",
        host=oauth_azurite.account_url,
        login=CLIENT_ID,
        password=CLIENT_SECRET,
        extra={"tenant_id": "adfs", "client_secret_auth_config": {"authority": entra.authority_host}},
    )
    round_trip(BlobStoreConfig(backend="azure", connection=conn, retry_total=0), prefix="mi")
    assert entra.token_requests and entra.token_requests[0]["client_id"] == CLIENT_ID


def test_a_refused_identity_fails_the_storage_call_and_writes_nothing(oauth_azurite, entra, monkeypatch) -> None:
    monkeypatch.setattr(storage, "LIGHT_CLIENTS", [False])
    container = f"mi-{uuid.uuid4().hex[:10]}"
    key_store = open_blob_store(
        BlobStoreConfig(
            backend="azure",
            retry_total=0,
            connection=ConnectionInfo(
                "refresher_blob", "wasb", extra={"connection_string": oauth_azurite.connection_string}
            ),
        )
    )
    use_environment_credential(monkeypatch, entra, secret="not-the-secret")
    store = open_blob_store(
        BlobStoreConfig(
            backend="azure",
            retry_total=0,
            connection=ConnectionInfo("refresher_blob", "wasb", host=oauth_azurite.account_url),
        )
    )
    try:
        key_store.ensure_containers([container])
        with pytest.raises(BlobStorageError, match=r"invalid client secret|ClientAuthenticationError"):
            store.put_bytes(container, "a/b.xml", b"<x/>")
        assert not key_store.exists(container, "a/b.xml")
    finally:
        store.close()
        key_store.close()
    assert entra.token_requests, "the identity provider was asked, and refused"


def test_azurite_refuses_a_token_for_another_audience(oauth_azurite, entra, tls) -> None:
    """The OAuth mode really checks: the stand-in's token for Key Vault is no storage token."""
    with httpx.Client(verify=str(tls[0])) as client:
        for resource, expected in (("https://vault.azure.net", 403), ("https://storage.azure.com", 200)):
            response = client.get(
                f"{oauth_azurite.account_url}?comp=list",
                headers={"Authorization": f"Bearer {entra.access_token(resource)}", "x-ms-version": "2021-12-02"},
            )
            assert response.status_code == expected, (resource, response.text[:300])
            assert expected == 200 or "AuthenticationFailed" in response.text
