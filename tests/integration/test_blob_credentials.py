"""Blob storage through the Azure provider's WasbHook against Azurite, with each way a
``wasb`` connection can authenticate; and the light path of the stage worker processes
(no Airflow import) taking the same decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iati_refresher import storage
from iati_refresher.connections import ConnectionInfo
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobStoreConfig, azure_service_client
from tests.support import services
from tests.support.blobs import round_trip


def forms(azurite: services.Azurite) -> dict[str, ConnectionInfo]:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    url = f"http://127.0.0.1:{azurite.blob_port}/{services.AZURITE_ACCOUNT}"
    sas = generate_account_sas(
        services.AZURITE_ACCOUNT,
        services.AZURITE_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True, add=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return {
        "connection string": ConnectionInfo(
            "refresher_blob", "wasb", extra={"connection_string": azurite.connection_string}
        ),
        "account key (login/password/host)": ConnectionInfo(
            "refresher_blob", "wasb", host=url, login=services.AZURITE_ACCOUNT, password=services.AZURITE_KEY
        ),
        "shared access key extra": ConnectionInfo(
            "refresher_blob", "wasb", host=url, extra={"extra__wasb__shared_access_key": services.AZURITE_KEY}
        ),
        "SAS token": ConnectionInfo("refresher_blob", "wasb", host=url, extra={"sas_token": sas}),
    }


@pytest.mark.parametrize("light", [False, True], ids=["WasbHook", "worker process"])
@pytest.mark.parametrize(
    "form", ["connection string", "account key (login/password/host)", "shared access key extra", "SAS token"]
)
def test_every_credential_form_reaches_azurite(azurite, monkeypatch, form: str, light: bool) -> None:
    monkeypatch.setattr(storage, "LIGHT_CLIENTS", [light])
    config = BlobStoreConfig(backend="azure", connection=forms(azurite)[form], retry_total=0)
    round_trip(config)
    assert config.describe() == f"azure blob storage at http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"


def test_the_worker_path_takes_the_decisions_wasbhook_takes(azurite, monkeypatch) -> None:
    """Same account URL, same credential kind, same client options, for every form."""
    for form, info in {
        **forms(azurite),
        "managed identity (DefaultAzureCredential)": ConnectionInfo(
            "refresher_blob",
            "wasb",
            host="https://acct.blob.core.windows.net",
            extra={"managed_identity_client_id": "00000000-0000-0000-0000-000000000001"},
        ),
        "service principal": ConnectionInfo(
            "refresher_blob",
            "wasb",
            host="https://acct.blob.core.windows.net",
            login="app-id",
            password="app-secret",
            extra={"tenant_id": "tenant"},
        ),
    }.items():
        config = BlobStoreConfig(backend="azure", connection=info, retry_total=1, retry_backoff_s=1)
        clients = {}
        for light in (False, True):
            monkeypatch.setattr(storage, "LIGHT_CLIENTS", [light])
            clients[light] = azure_service_client(config)
        hook_client, light_client = clients[False], clients[True]
        assert light_client.url == hook_client.url, form
        assert type(light_client.credential).__name__ == type(hook_client.credential).__name__, form
        for attribute in ("account_name", "account_key", "signature"):
            assert getattr(light_client.credential, attribute, None) == getattr(
                hook_client.credential, attribute, None
            ), (form, attribute)
        assert light_client._config.retry_policy.total_retries == hook_client._config.retry_policy.total_retries == 1


def test_no_connection_is_a_missing_connection_outside_embedded_runs(tmp_path) -> None:
    from iati_refresher.connections import ConnectionMissing

    with pytest.raises(ConnectionMissing, match="refresher_blob"):
        storage.blob_config_from(None, Settings(embedded=False))
    assert storage.blob_config_from(None, Settings(embedded=True, local_blob_dir=str(tmp_path))).backend == "local"
