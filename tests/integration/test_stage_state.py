"""Stage selection, claims, retry discipline and resets on real PostgreSQL."""

from __future__ import annotations

import pytest

from iati_refresher.db import repository as repo

H = "a" * 40


@pytest.fixture
def docs(db):
    db.execute(
        "INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o1', 'org', 'Org', now(), now())"
    )
    for i in range(1, 4):
        db.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, name, cached_dataset_url)
               VALUES (%s, %s, 'http://x', now(), now(), 'o1', %s, 'http://bds/x')""",
            (f"d{i}", H, f"name-{i}"),
        )
    db.commit()
    return db


def ids(rows) -> list[str]:
    return [r["id"] for r in rows]


def fail(db, doc_id: str, stage: str = "download", *, retryable: bool = True, max_attempts: int = 3, base: int = 0):
    repo.record_outcomes(
        db,
        stage,
        [
            {
                "document_id": doc_id,
                "hash": H,
                "status": "failed",
                "code": "http_500",
                "message": "boom",
                "retryable": retryable,
            }
        ],
        run_id="r",
        max_attempts=max_attempts,
        base_delay_s=base,
        max_delay_s=3600,
    )
    db.commit()


def test_stage_predicates_follow_the_document_journey(docs) -> None:
    db = docs
    assert ids(repo.ready_documents(db, "download")) == ["d1", "d2", "d3"]
    db.execute("UPDATE document SET downloaded = now() WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "download")) == ["d2", "d3"]
    assert ids(repo.ready_documents(db, "validate")) == ["d1"]
    db.execute(
        """INSERT INTO validation (id, document_id, document_hash, document_url, created, valid, report)
                  VALUES (1, 'd1', %s, 'u', now(), true, '{}')""",
        (H,),
    )
    db.execute("UPDATE document SET validation = 1 WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "validate")) == []
    assert ids(repo.ready_documents(db, "clean")) == ["d1"]
    db.execute("UPDATE document SET clean_end = now() WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "flatten")) == ids(repo.ready_documents(db, "lakify")) == ["d1"]
    db.execute("UPDATE document SET flatten_end = now(), lakify_end = now() WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "index")) == ["d1"]
    db.execute("UPDATE document SET solrize_end = now() WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "index")) == []
    db.execute("UPDATE document SET solrize_reindex = true WHERE id = 'd1'")  # what datastore-services sets
    assert ids(repo.ready_documents(db, "index")) == ["d1"]


def test_safety_rules_hold_back_fresh_schema_invalid_and_flagged_publishers(docs) -> None:
    db = docs
    db.execute("UPDATE document SET downloaded = now(), file_schema_valid = false WHERE id = 'd1'")
    assert ids(repo.ready_documents(db, "validate", safety_period_s=7200)) == []
    assert ids(repo.ready_documents(db, "validate", safety_period_s=0)) == ["d1"]
    db.execute("UPDATE publisher SET black_flag = now()")
    assert ids(repo.ready_documents(db, "validate", safety_period_s=0)) == []


def test_claims_are_exclusive_and_expire(docs) -> None:
    db = docs
    assert repo.claim(db, ["d1", "d2"], "download", "run-a", 3600) == ["d1", "d2"]
    assert repo.claim(db, ["d1", "d2", "d3"], "download", "run-b", 3600) == ["d3"]
    assert ids(repo.ready_documents(db, "download", owner="run-b")) == ["d3"]
    assert ids(repo.ready_documents(db, "download", owner="run-a")) == ["d1", "d2"]
    # the same owner (an Airflow retry of the batch) can take its claim again
    assert sorted(repo.claim(db, ["d1"], "download", "run-a", 3600)) == ["d1"]
    db.execute(
        "UPDATE document_claim SET expires_at = now() AT TIME ZONE 'UTC' - interval '1 second' WHERE owner = 'run-a'"
    )
    assert sorted(repo.claim(db, ["d1", "d2"], "download", "run-b", 3600)) == ["d1", "d2"]
    repo.release(db, ["d1", "d2", "d3"], "run-b")
    assert db.execute("SELECT count(*) AS n FROM document_claim").fetchone()["n"] == 0


def test_retries_back_off_then_give_up_visibly(docs) -> None:
    db = docs
    fail(db, "d1", base=3600)
    row = repo.stage_rows(db, "d1")[0]
    assert (row["outcome"], row["attempts"]) == ("failed", 1) and row["next_attempt_at"] is not None
    assert "d1" not in ids(repo.ready_documents(db, "download")), "waits for its next attempt"
    db.execute("UPDATE document_stage SET next_attempt_at = now() AT TIME ZONE 'UTC' - interval '1 s'")
    assert "d1" in ids(repo.ready_documents(db, "download"))
    fail(db, "d1")
    fail(db, "d1")
    row = repo.stage_rows(db, "d1")[0]
    assert (row["outcome"], row["attempts"]) == ("gave_up", 3)
    assert "d1" not in ids(repo.ready_documents(db, "download"))
    # an operator re-run clears it
    repo.reset_documents(db, ["d1"], "download")
    assert "d1" in ids(repo.ready_documents(db, "download"))


def test_backoff_doubles_and_is_capped(docs) -> None:
    db = docs
    delays = []
    for _ in range(4):
        fail(db, "d1", base=100, max_attempts=10)
        row = db.execute(
            "SELECT extract(epoch FROM next_attempt_at - last_attempt_at) AS s FROM document_stage"
        ).fetchone()
        delays.append(round(float(row["s"])))
    assert delays == [100, 200, 400, 800]


def test_not_retryable_failure_gives_up_at_once(docs) -> None:
    db = docs
    fail(db, "d1", retryable=False)
    assert repo.stage_rows(db, "d1")[0]["outcome"] == "gave_up"


def test_an_outside_reset_revives_a_parked_document(docs) -> None:
    db = docs
    db.execute("UPDATE document SET downloaded = now(), clean_end = now(), flatten_api_error = 1 WHERE id = 'd1'")
    fail(db, "d1", "flatten", retryable=False)
    assert ids(repo.ready_documents(db, "flatten")) == []
    db.execute(
        "UPDATE document SET flatten_start = NULL, flatten_end = NULL, flatten_api_error = NULL"
    )  # clear-flattener
    assert ids(repo.ready_documents(db, "flatten")) == ["d1"]


def test_results_for_an_old_version_are_not_written(docs) -> None:
    db = docs
    db.execute("UPDATE document SET hash = %s WHERE id = 'd1'", ("b" * 40,))
    repo.finish_download(db, [{"id": "d1", "hash": H, "ok": True, "bytes": 10}])
    fail(db, "d1")
    row = db.execute("SELECT downloaded FROM document WHERE id = 'd1'").fetchone()
    assert row["downloaded"] is None
    assert repo.stage_rows(db, "d1") == []


def test_download_outcomes_keep_the_reference_semantics(docs) -> None:
    db = docs
    repo.finish_download(db, [{"id": "d1", "hash": H, "ok": False, "download_error": 404}])
    repo.finish_download(db, [{"id": "d2", "hash": H, "ok": True, "bytes": 5, "etag": '"x"', "encoding": "utf-8"}])
    rows = {r["id"]: r for r in db.execute("SELECT * FROM document")}
    assert rows["d1"]["download_error"] == 404 and rows["d1"]["downloaded"] is None
    assert rows["d2"]["download_error"] is None and rows["d2"]["downloaded"] is not None
    assert rows["d2"]["source_etag"] == '"x"' and rows["d2"]["source_bytes"] == 5


def test_validation_rows_are_append_only_and_the_document_points_at_the_latest(docs) -> None:
    db = docs
    doc = {"id": "d1", "hash": H}
    first = repo.save_validation(db, doc, {"valid": False, "fileType": "iati-activities"}, api_error=422)
    db.execute("UPDATE document SET regenerate_validation_report = true")
    second = repo.save_validation(db, doc, {"valid": True}, api_error=None, schema_valid=True)
    rows = db.execute(
        "SELECT id, valid, document_id, document_hash, publisher, publisher_name FROM validation ORDER BY id"
    ).fetchall()
    assert [r["id"] for r in rows] == [first, second]
    assert rows[1]["publisher"] == "o1" and rows[1]["publisher_name"] == "org"
    d1 = db.execute(
        "SELECT validation, regenerate_validation_report, file_schema_valid FROM document WHERE id='d1'"
    ).fetchone()
    assert d1 == {"validation": second, "regenerate_validation_report": False, "file_schema_valid": True}
    assert repo.latest_report_for_hash(db, H)["id"] == second
