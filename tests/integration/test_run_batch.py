"""``pipeline.run_batch`` on real PostgreSQL: claims always released, pools under any ``__main__``."""

from __future__ import annotations

import sys
import types

import pytest

from iati_refresher import pipeline, workers
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
        db.execute("""INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, downloaded)
                      VALUES (%s, %s, 'u', now(), now(), 'o', now())""", (doc_id, H))
    # d1 was validated before; d2 has identical content, so its report is reused
    db.execute("""INSERT INTO validation (document_id, document_hash, document_url, created, valid, report)
                  VALUES ('d1', %s, 'u', now(), true, '{"valid": true}')""", (H,))
    db.execute("UPDATE document SET validation = 1, file_schema_valid = true WHERE id = 'd1'")
    db.commit()

    result = pipeline.run_batch({"stage": "validate", "ids": ["d2"], "label": "d2", "key": "0"},
                                run_id="run-1", dag_id="test", settings=env)

    assert result["documents_in"] == 1 and result["documents_ok"] == 1
    assert db.execute("SELECT validation FROM document WHERE id = 'd2'").fetchone()["validation"] == 1
    assert db.execute("SELECT count(*) AS n FROM document_claim").fetchone()["n"] == 0


def _echo(doc: dict, settings: Settings) -> dict:
    return {"document_id": doc["id"], "status": "ok", "code": None, "message": None, "retryable": False,
            "data": {"pid": __import__("os").getpid()}}


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
