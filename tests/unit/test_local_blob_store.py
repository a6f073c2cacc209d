"""The embedded blob store lists by prefix exactly as Azure does, walking only the prefix's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from iati_refresher.storage import LocalBlobStore


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path)
    for name in ("doc-a/1.xml", "doc-a/1.json", "doc-a/sub/2.xml", "doc-ab/3.xml", "doc-b/4.xml", "top.xml"):
        blobs.put_bytes("lake", name, b"x")
    return blobs


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", {"doc-a/1.xml", "doc-a/1.json", "doc-a/sub/2.xml", "doc-ab/3.xml", "doc-b/4.xml", "top.xml"}),
        ("doc-a/", {"doc-a/1.xml", "doc-a/1.json", "doc-a/sub/2.xml"}),
        ("doc-a", {"doc-a/1.xml", "doc-a/1.json", "doc-a/sub/2.xml", "doc-ab/3.xml"}),
        ("doc-a/1", {"doc-a/1.xml", "doc-a/1.json"}),
        ("doc-a/sub/", {"doc-a/sub/2.xml"}),
        ("doc-c/", set()),
        ("doc-a/nothing/here", set()),
    ],
)
def test_list_matches_name_prefixes(store: LocalBlobStore, prefix: str, expected: set[str]) -> None:
    assert set(store.list("lake", prefix)) == expected


def test_delete_prefix_leaves_other_datasets(store: LocalBlobStore) -> None:
    assert store.delete_prefix("lake", "doc-a/") == 3
    assert set(store.list("lake")) == {"doc-ab/3.xml", "doc-b/4.xml", "top.xml"}


def test_a_prefix_cannot_leave_the_container(store: LocalBlobStore) -> None:
    with pytest.raises(ValueError, match="unsafe blob name"):
        list(store.list("lake", "../other/"))
