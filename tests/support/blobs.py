"""One round trip through a blob store: what every credential test proves works."""

from __future__ import annotations

import uuid

from iati_refresher.storage import BlobStoreConfig, open_blob_store


def round_trip(config: BlobStoreConfig, prefix: str = "cred") -> None:
    """Create a container, then put, get, list and delete one blob with ``config``'s credentials."""
    store = open_blob_store(config)
    try:
        container = f"{prefix}-{uuid.uuid4().hex[:10]}"
        store.ensure_containers([container])
        store.put_bytes(container, "a/b.xml", b"<x/>")
        assert store.get_bytes(container, "a/b.xml") == b"<x/>"
        assert list(store.list(container, "a/")) == ["a/b.xml"]
        assert store.delete(container, ["a/b.xml"]) == 1
    finally:
        store.close()
