"""Registry sync on real PostgreSQL: the reference's behaviours and the fixed defects."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from iati_refresher.db import repository as repo
from iati_refresher.registry.base import RegistrySnapshot
from iati_refresher.stages.sync import sync_snapshot

T0 = datetime(2026, 11, 1, 12, 0, 0)
ORG1, ORG2, ORG3 = "aaaa0001-org", "bbbb0002-org", "cccc0003-org"


def pub(org_id: str, name: str, title: str | None = None) -> dict:
    return {"org_id": org_id, "name": name, "title": title or name.title(), "package_count": 1, "iati_id": f"XM-{name}"}


def ds(id_: str, publisher: str, hash_: str = "a" * 40, cached: str | None = "http://bds/x.xml") -> dict:
    return {
        "id": id_,
        "name": f"ds-{id_}",
        "hash": hash_,
        "url": f"http://publisher/{id_}.xml",
        "publisher": publisher,
        "cached_dataset_url": cached,
    }


class Recorder:
    def __init__(self) -> None:
        self.versions: list[tuple[str, str]] = []
        self.datasets: list[tuple[str, str]] = []

    def sync(self, db, snapshot: RegistrySnapshot, at: datetime, **kw):
        return sync_snapshot(
            db,
            snapshot,
            seen_at=at,
            run_id="run-1",
            publisher_safety_share=kw.get("share", 0.5),
            document_safety_share=kw.get("share", 0.5),
            remove_version=lambda d, h: self.versions.append((d, h)),
            remove_dataset=lambda d, h: self.datasets.append((d, h)),
        )


def snap(publishers, datasets, rejected=None) -> RegistrySnapshot:
    return RegistrySnapshot(
        publishers=publishers, datasets=datasets, index_created=1, etag='"e"', source="bds", rejected=rejected or []
    )


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def test_adds_publishers_and_datasets_with_the_reference_mapping(db, rec) -> None:
    result = rec.sync(
        db, snap([pub(ORG1, "org-1"), pub(ORG2, "org-2")], [ds("d1", ORG1), ds("d2", ORG2, hash_="", cached=None)]), T0
    )
    assert result.refused is None and sorted(result.added) == ["d1", "d2"]
    rows = {r["id"]: r for r in db.execute("SELECT * FROM document").fetchall()}
    assert rows["d1"]["hash"] == "a" * 40 and rows["d1"]["cached_dataset_url"] == "http://bds/x.xml"
    assert rows["d1"]["url"] == "http://publisher/d1.xml" and rows["d1"]["name"] == "ds-d1"
    assert rows["d1"]["publisher"] == ORG1 and rows["d1"]["first_seen"] == T0
    assert rows["d2"]["hash"] == "" and rows["d2"]["cached_dataset_url"] is None
    pubs = {r["org_id"]: r for r in db.execute("SELECT * FROM publisher").fetchall()}
    assert pubs[ORG1]["name"] == "org-1" and pubs[ORG1]["iati_id"] == "XM-org-1"
    changes = repo.registry_changes(db, "run-1")
    assert [(c["document_id"], c["change"]) for c in changes] == [("d1", "added"), ("d2", "added")]


def test_hash_change_resets_every_pipeline_column_and_drops_the_old_version(db, rec) -> None:
    rec.sync(db, snap([pub(ORG1, "org-1")], [ds("d1", ORG1)]), T0)
    db.execute("""UPDATE document SET downloaded = now(), flatten_end = now(), lakify_end = now(),
                  solrize_end = now(), clean_end = now(), file_schema_valid = true,
                  flattened_activities = '[]', solr_indexed_hash = hash WHERE id = 'd1'""")
    repo.record_outcomes(
        db,
        "download",
        [{"document_id": "d1", "hash": "a" * 40, "status": "failed", "code": "x", "retryable": True}],
        run_id=None,
        max_attempts=5,
        base_delay_s=1,
        max_delay_s=10,
    )
    db.commit()
    changed = dict(ds("d1", ORG1, hash_="b" * 40), url="http://publisher/new.xml")
    result = rec.sync(db, snap([pub(ORG1, "org-1")], [changed]), T0 + timedelta(hours=1))
    assert result.updated == ["d1"]
    row = db.execute("SELECT * FROM document WHERE id = 'd1'").fetchone()
    assert row["hash"] == "b" * 40 and row["url"] == "http://publisher/new.xml"
    assert row["modified"] == T0 + timedelta(hours=1)
    for column in repo.RESET_ON_CHANGE:
        assert row[column] is None, column
    assert row["solr_indexed_hash"] == "a" * 40, "the old version stays searchable until the new one is indexed"
    assert repo.stage_rows(db, "d1") == []
    assert rec.versions == [("d1", "a" * 40)]
    change = repo.registry_changes(db, "run-1")[-1]
    assert (change["change"], change["old_hash"], change["new_hash"]) == ("updated", "a" * 40, "b" * 40)


def test_unchanged_dataset_keeps_its_state_but_refreshes_the_cached_url(db, rec) -> None:
    rec.sync(db, snap([pub(ORG1, "org-1")], [ds("d1", ORG1)]), T0)
    db.execute("UPDATE document SET downloaded = now() WHERE id = 'd1'")
    db.commit()
    moved = dict(ds("d1", ORG1), cached_dataset_url="http://bds/moved.xml")
    result = rec.sync(db, snap([pub(ORG1, "org-1")], [moved]), T0 + timedelta(hours=1))
    assert result.unchanged == 1 and not result.updated
    row = db.execute("SELECT downloaded, cached_dataset_url, last_seen FROM document").fetchone()
    assert row["downloaded"] is not None and row["cached_dataset_url"] == "http://bds/moved.xml"
    assert row["last_seen"] == T0 + timedelta(hours=1)


def test_removed_dataset_and_publisher_leave_everywhere(db, rec) -> None:
    rec.sync(
        db,
        snap(
            [pub(ORG1, "org-1"), pub(ORG2, "org-2"), pub(ORG3, "org-3")],
            [ds("d1", ORG1), ds("d2", ORG2, hash_="c" * 40), ds("d3", ORG3)],
        ),
        T0,
    )
    result = rec.sync(
        db, snap([pub(ORG1, "org-1"), pub(ORG3, "org-3")], [ds("d1", ORG1), ds("d3", ORG3)]), T0 + timedelta(hours=1)
    )
    assert result.removed == ["d2"] and result.publishers_removed == [ORG2]
    assert rec.datasets == [("d2", "c" * 40)]
    assert {r["id"] for r in db.execute("SELECT id FROM document")} == {"d1", "d3"}
    assert {r["org_id"] for r in db.execute("SELECT org_id FROM publisher")} == {ORG1, ORG3}


def test_sync_refused_when_more_than_half_vanish(db, rec) -> None:
    rec.sync(
        db,
        snap(
            [pub(ORG1, "org-1"), pub(ORG2, "org-2"), pub(ORG3, "org-3")],
            [ds("d1", ORG1), ds("d2", ORG2), ds("d3", ORG3)],
        ),
        T0,
    )
    result = rec.sync(db, snap([pub(ORG1, "org-1")], [ds("d1", ORG1)]), T0 + timedelta(hours=1))
    assert result.refused and "below 50%" in result.refused
    assert repo.count_documents(db) == 3 and repo.count_publishers(db) == 3
    assert rec.datasets == []


def test_renamed_publisher_keeps_its_documents(db, rec) -> None:
    """The reference skipped a renamed publisher's update, then cascade-deleted its documents."""
    rec.sync(db, snap([pub(ORG1, "old-name")], [ds("d1", ORG1)]), T0)
    result = rec.sync(db, snap([pub(ORG1, "new-name")], [ds("d1", ORG1)]), T0 + timedelta(hours=1))
    assert result.removed == [] and result.publishers_removed == []
    assert db.execute("SELECT name FROM publisher").fetchone()["name"] == "new-name"
    assert repo.count_documents(db) == 1


def test_one_bad_row_is_recorded_and_skipped(db, rec) -> None:
    """The reference aborted the rest of the cycle on one FK or NOT NULL violation."""
    bad_fk = ds("d2", "no-such-publisher")
    bad_null = dict(ds("d3", ORG1), url=None)
    result = rec.sync(db, snap([pub(ORG1, "org-1")], [ds("d1", ORG1), bad_fk, bad_null, ds("d4", ORG1)]), T0)
    assert sorted(result.added) == ["d1", "d4"]
    assert {r["record"]["id"] for r in result.rejected} == {"d2", "d3"}
    assert all(r["reason"] for r in result.rejected)


def test_content_shared_by_two_datasets(db, rec) -> None:
    rec.sync(db, snap([pub(ORG1, "org-1")], [ds("d1", ORG1), ds("d2", ORG1)]), T0)
    assert repo.documents_sharing_hash(db, "a" * 40, "d1") == 1
