"""``pipeline.run_batch`` on real PostgreSQL: claims always released, pools under any ``__main__``."""

from __future__ import annotations

import sys
import types

import pytest

from iati_refresher import pipeline, workers
from iati_refresher.pipeline import batches
from iati_refresher.settings import Settings
from tests.support import services

H = "a" * 40


@pytest.fixture
def env(pg_dbname, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_DB", services.airflow_uri(pg_dbname))
    monkeypatch.setenv("REFRESHER_LOCAL_BLOB_DIR", str(tmp_path / "blobs"))
    return Settings.from_env()


def test_documents_settled_without_a_worker_release_their_claims(env, db) -> None:
    db.execute("INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o', 'p', 'P', now(), now())")
    for doc_id in ("d1", "d2"):
        db.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, downloaded)
                      VALUES (%s, %s, 'u', now(), now(), 'o', now())""",
            (doc_id, H),
        )
    # d1 was validated before; d2 has identical content, so its report is reused
    db.execute(
        """INSERT INTO validation (document_id, document_hash, document_url, created, valid, report)
                  VALUES ('d1', %s, 'u', now(), true, '{"valid": true}')""",
        (H,),
    )
    db.execute("UPDATE document SET validation = 1, file_schema_valid = true WHERE id = 'd1'")
    db.commit()

    result = pipeline.run_batch(
        {"stage": "validate", "ids": ["d2"], "label": "d2", "key": "0"}, run_id="run-1", dag_id="test", settings=env
    )

    assert result["documents_in"] == 1 and result["documents_ok"] == 1
    assert db.execute("SELECT validation FROM document WHERE id = 'd2'").fetchone()["validation"] == 1
    assert db.execute("SELECT count(*) AS n FROM document_claim").fetchone()["n"] == 0


def _echo(doc: dict, settings: Settings) -> dict:
    return {
        "document_id": doc["id"],
        "status": "ok",
        "code": None,
        "message": None,
        "retryable": False,
        "data": {"pid": __import__("os").getpid()},
    }


def test_process_pool_works_when_main_is_a_script_that_cannot_be_imported(tmp_path, monkeypatch) -> None:
    """Under Airflow the task's ``__main__`` is the ``airflow`` command; spawned workers must not run it."""
    script = tmp_path / "fake_airflow.py"
    script.write_text("raise SystemExit('workers must not import the main script')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    fake_main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    docs = [{"id": f"d{i}"} for i in range(4)]

    results = list(workers.run_pool(_echo, docs, Settings(), kind="process", size=2, resolved={}))

    assert sorted(doc["id"] for doc, _ in results) == ["d0", "d1", "d2", "d3"]
    assert all(outcome["status"] == "ok" for _, outcome in results)
    assert fake_main.__file__ == str(script), "the parent's __main__ is restored afterwards"


# --- batch tasks that fail for good ----------------------------------------------------------------


def _downloadable(db, *doc_ids: str) -> None:
    db.execute("INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o', 'p', 'P', now(), now())")
    for doc_id in doc_ids:
        db.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, cached_dataset_url)
                      VALUES (%s, %s, 'u', now(), now(), 'o', 'http://127.0.0.1:9/none')""",
            (doc_id, H),
        )
    db.commit()


def test_a_batch_failing_on_its_last_try_records_every_document_it_had_not_settled(env, db, monkeypatch) -> None:
    _downloadable(db, "d1", "d2")

    def broken(stage, docs, settings):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(batches, "_execute", broken)
    batch = {"stage": "download", "ids": ["d1", "d2"], "label": "d1 +1", "key": "0000"}
    with pytest.raises(RuntimeError):
        pipeline.run_batch(batch, run_id="run-1", dag_id="test", settings=env, final_try=False)
    assert db.execute("SELECT count(*) AS n FROM document_stage").fetchone()["n"] == 0, (
        "an earlier try: Airflow retries"
    )

    with pytest.raises(RuntimeError):
        pipeline.run_batch(
            batch, run_id="run-1", dag_id="test", settings=env, final_try=True, task_label="download[0: d1 +1]"
        )
    rows = db.execute("SELECT * FROM document_stage ORDER BY document_id").fetchall()
    assert [(r["document_id"], r["outcome"], r["code"], r["run_id"]) for r in rows] == [
        ("d1", "failed", "batch_failed", "run-1"),
        ("d2", "failed", "batch_failed", "run-1"),
    ]
    assert rows[0]["message"] == (
        "the download[0: d1 +1] task failed after its retries: RuntimeError: the database went away"
    )
    telemetry = db.execute("SELECT documents_in, documents_failed FROM run_stage_telemetry").fetchall()
    assert [(t["documents_in"], t["documents_failed"]) for t in telemetry] == [(2, 2)]
    assert db.execute("SELECT count(*) AS n FROM document_claim").fetchone()["n"] == 0


def test_the_summary_records_what_a_lost_batch_task_left_untouched(env, db) -> None:
    """The task's process was killed: no code of ours ran at its end.  The summary finds the
    failed task instance and records its documents, except those settled in this run."""
    from iati_refresher.db import repository as repo
    from iati_refresher.run_health import FailedBatch

    _downloadable(db, "d1", "d2", "d3")
    repo.claim(db, ["d1", "d2", "d3"], "download", "run-1:download:0000", 3600)  # the dead task's claims
    repo.record_outcomes(
        db,
        "download",
        [{"document_id": "d1", "hash": H, "status": "failed", "code": "http_500", "message": "m", "retryable": True}],
        run_id="run-1",
        max_attempts=5,
        base_delay_s=0,
        max_delay_s=0,
    )  # settled before the kill
    db.commit()
    lost = FailedBatch(stage="download", map_index=0, label="d1 +2", key="0000", ids=("d1", "d2", "d3"), state="failed")

    recorded = pipeline.record_lost_batches(
        [lost], run_id="run-1", dag_id="iati_refresh", settings=env, log_url=lambda b: "http://airflow/log"
    )

    assert recorded == {"download[0: d1 +2]": 2}
    rows = {r["document_id"]: r for r in db.execute("SELECT * FROM document_stage")}
    assert rows["d1"]["code"] == "http_500", "an outcome of this run is kept"
    assert {rows[d]["code"] for d in ("d2", "d3")} == {"batch_failed"}
    assert rows["d2"]["message"] == (
        "the download[0: d1 +2] task failed after its retries without finishing (log: http://airflow/log)"
    )
    assert db.execute("SELECT count(*) AS n FROM document_claim").fetchone()["n"] == 0, "the dead task's claims"
    assert pipeline.record_lost_batches([lost], run_id="run-1", dag_id="iati_refresh", settings=env) == {
        "download[0: d1 +2]": 0
    }, "recorded once"
