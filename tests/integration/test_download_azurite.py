"""The download stage storing into Azure Blob Storage (Azurite), fed by the sample registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from iati_refresher.registry.sources import build_source
from iati_refresher.sample.server import SampleRegistryServer
from iati_refresher.settings import Settings
from iati_refresher.stages.download import download_document
from iati_refresher.storage import AzureBlobStore


@pytest.fixture
def settings() -> Settings:
    # A fresh container per test keeps the tests independent on the shared Azurite.
    return Settings(allow_private_addresses=True, source_container=f"source-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def store(azurite, settings: Settings) -> AzureBlobStore:
    blobs = AzureBlobStore(azurite.connection_string)
    blobs.ensure_containers([settings.source_container])
    return blobs


@pytest.fixture(scope="module")
def sample() -> Iterator[SampleRegistryServer]:
    with SampleRegistryServer() as server:
        yield server


def test_sample_registry_downloads_into_azure(
    sample: SampleRegistryServer, store: AzureBlobStore, settings: Settings
) -> None:
    snapshot = build_source(settings, sample.url).fetch(None)
    assert snapshot is not None
    outcomes = {d["name"]: download_document(d, store, settings) for d in snapshot.datasets}
    assert outcomes["riverbend-archive"].status == "skipped"
    assert outcomes["riverbend-archive"].data["download_error"] == 4
    downloaded = {name: o for name, o in outcomes.items() if o.status == "ok"}
    assert len(downloaded) == len(snapshot.datasets) - 1
    for ds in snapshot.datasets:
        if ds["name"] in downloaded:
            served = sample.files[ds["cached_dataset_url"].removeprefix(sample.url)].body
            assert store.get_bytes(settings.source_container, f"{ds['hash']}.xml") == served
    assert downloaded["riverbend-sanitation"].data["encoding"] == "cp1252"
    assert downloaded["condor-verde-actividades"].data["encoding"] == "utf-8"


def test_conditional_refetch_keeps_the_azure_blob(
    sample: SampleRegistryServer, store: AzureBlobStore, settings: Settings
) -> None:
    snapshot = build_source(settings, sample.url).fetch(None)
    doc = next(d for d in snapshot.datasets if d["name"] == "meadowlark-activities")
    first = download_document(doc, store, settings)
    name = f"{doc['hash']}.xml"
    sample.clear_log()
    again = download_document(
        {
            **doc,
            "source_etag": first.data["etag"],
            "source_last_modified": first.data["last_modified"],
            "source_bytes": first.data["bytes"],
            "source_encoding": first.data["encoding"],
        },
        store,
        settings,
    )
    assert again.status == "ok"
    assert again.data["not_modified"] is True
    (request,) = sample.requests
    assert request.headers["if-none-match"] == first.data["etag"]
    assert store.exists(settings.source_container, name)

    # The blob vanished from storage: the next download fetches it in full again.
    store.delete(settings.source_container, [name])
    third = download_document({**doc, "source_etag": first.data["etag"]}, store, settings)
    assert third.data["not_modified"] is False
    assert store.exists(settings.source_container, name)
