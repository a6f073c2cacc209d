"""Lakify against Azure Blob Storage (Azurite): a republished dataset uploads only the lake
blobs whose content changed, and still removes the ones it no longer has."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from iati_refresher.iati.identifiers import lake_name
from iati_refresher.settings import Settings
from iati_refresher.stages.lakify import lakify_document
from iati_refresher.storage import AzureBlobStore

ACTIVITY = "<iati-activity><iati-identifier>{id}</iati-identifier><title><narrative>{title}</narrative></title></iati-activity>"


def _file(*activities: tuple[str, str]) -> bytes:
    body = "".join(ACTIVITY.format(id=i, title=t) for i, t in activities)
    return f'<?xml version="1.0" encoding="UTF-8"?><iati-activities version="2.03">{body}</iati-activities>'.encode()


class CountingStore(AzureBlobStore):
    """Azurite, with the lake uploads counted (the real client does the work)."""

    uploads: list[str]

    def put_bytes(self, container: str, name: str, data: bytes) -> None:
        if container.startswith("lake"):
            self.uploads.append(name)
        super().put_bytes(container, name, data)


@pytest.fixture
def settings() -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        clean_container=f"clean-{suffix}",
        flat_container=f"flat-{suffix}",
        lake_container=f"lake-{suffix}",
        lake_upload_threads=2,
    )


def test_republished_dataset_uploads_only_changed_lake_blobs(azurite, settings: Settings, tmp_path: Path) -> None:
    store = CountingStore(azurite.connection_string)
    store.uploads = []
    store.ensure_containers([settings.clean_container, settings.flat_container, settings.lake_container])
    store.put_bytes(settings.clean_container, "v1.xml", _file(("A-1", "one"), ("A-2", "two"), ("A-3", "three")))
    first = lakify_document({"id": "doc", "hash": "v1"}, store, settings)
    assert first.status == "ok"
    assert len(store.uploads) == 6
    assert "unchanged_blobs" not in first.data

    # the next version changes A-2, drops A-3 and adds A-4
    store.uploads = []
    store.put_bytes(settings.clean_container, "v2.xml", _file(("A-1", "one"), ("A-2", "TWO"), ("A-4", "four")))
    second = lakify_document({"id": "doc", "hash": "v2"}, store, settings)
    assert second.status == "ok"
    assert second.data["unchanged_blobs"] == 2  # A-1's XML and JSON
    assert sorted(store.uploads) == sorted(
        lake_name("doc", identifier, 0, ext) for identifier in ("A-2", "A-4") for ext in ("xml", "json")
    )
    assert set(store.list(settings.lake_container, "doc/")) == {
        lake_name("doc", identifier, 0, ext) for identifier in ("A-1", "A-2", "A-4") for ext in ("xml", "json")
    }
    assert b"TWO" in store.get_bytes(settings.lake_container, lake_name("doc", "A-2", 0, "xml"))

    # the service's digests are what is compared: a blob changed behind lakify's back is rewritten
    store.put_bytes(settings.lake_container, lake_name("doc", "A-1", 0, "xml"), b"<tampered/>")
    store.uploads = []
    third = lakify_document({"id": "doc", "hash": "v2"}, store, settings)
    assert third.status == "ok"
    assert store.uploads == [lake_name("doc", "A-1", 0, "xml")]
    assert third.data["unchanged_blobs"] == 5
