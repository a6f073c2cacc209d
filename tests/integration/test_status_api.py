"""The status plugin inside Airflow's own API server app, against a real refresher database.

The app is Airflow's (``create_app``), so the plugin is found in the plugins folder and
mounted by Airflow itself; tokens are real JWTs from Airflow's auth manager.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from iati_refresher import connections
from iati_refresher.db import repository as repo
from tests.support import services

SEEN = datetime(2026, 3, 1, 12, 0, 0)
ROUTES = [
    "/iati-status/api/datasets",
    "/iati-status/api/datasets/anything",
    "/iati-status/api/summary",
    "/iati-status/metrics",
]


@pytest.fixture(autouse=True)
def _connections_from_the_environment(monkeypatch):
    """Connections come from this test's AIRFLOW_CONN_* variables, not from a value another
    in-process test preloaded (``connections.preload`` lasts for the process)."""
    monkeypatch.setattr(connections, "_PRELOADED", {})


@pytest.fixture(scope="module")
def airflow_app():
    """Airflow's API server app with a migrated metadata database (tokens are checked there)."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from airflow.settings import engine
    from airflow.utils import db
    from sqlalchemy import inspect

    if not inspect(engine).has_table("revoked_token"):
        db.resetdb()
    with pytest.MonkeyPatch.context() as mp:
        # A full-length signing key (the generated fallback is short and warns).
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "status-api-tests-" + "k" * 64)
        app = create_app("core")
        yield app
    purge_cached_app()


def token_for(username: str, role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


@pytest.fixture
def client(airflow_app, pg_dbname, monkeypatch) -> TestClient:
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_DB", services.airflow_uri(pg_dbname))
    return TestClient(airflow_app)


@pytest.fixture
def admin(client) -> TestClient:
    client.headers["Authorization"] = f"Bearer {token_for('admin', 'admin')}"
    return client


def outcome(conn, doc, stage, status_, code=None, message=None, *, retryable=False):
    repo.record_outcomes(
        conn,
        stage,
        [
            {
                "document_id": doc["id"],
                "hash": doc["hash"],
                "status": status_,
                "code": code,
                "message": message,
                "retryable": retryable,
            }
        ],
        run_id="scheduled__1",
        max_attempts=5,
        base_delay_s=600,
        max_delay_s=86400,
    )


@pytest.fixture
def seeded(db):
    """Five datasets of two publishers: new, indexed, gone (404), flooding (flagged), and a name
    that would be markup if the page did not escape it."""
    repo.upsert_publisher(db, {"org_id": "XM-DAC-1", "name": "meadowlark", "title": "Meadowlark Trust"}, SEEN)
    repo.upsert_publisher(db, {"org_id": "XM-DAC-2", "name": "riverbend", "title": "Riverbend Water"}, SEEN)
    docs = {}
    for n, (name, pub) in enumerate(
        [
            ("m-new", "XM-DAC-1"),
            ("m-indexed", "XM-DAC-1"),
            ("r-gone", "XM-DAC-2"),
            ("r-flood", "XM-DAC-2"),
            ("<b>m-odd</b>", "XM-DAC-1"),
        ],
        start=1,
    ):
        doc = {
            "id": f"id-{n}",
            "hash": f"{n:040x}",
            "name": name,
            "publisher": pub,
            "url": f"https://publisher:pa55word@example.org/{n}.xml",
            "cached_dataset_url": None,
        }
        repo.upsert_document(db, doc, SEEN)
        docs[name] = doc
    ok = {"ok": True, "bytes": 10}
    d = docs["m-indexed"]
    repo.finish_download(db, [{"id": d["id"], "hash": d["hash"], **ok}])
    repo.save_validation(
        db,
        d,
        {
            "valid": True,
            "fileType": "iati-activities",
            "iatiVersion": "2.03",
            "summary": {"critical": 0, "error": 0, "warning": 0, "advisory": 0},
        },
        api_error=None,
        schema_valid=True,
    )
    repo.finish_clean(db, d, ok=True, error=None)
    repo.finish_flatten(db, d, ok=True, manifest=[], activities=4)
    repo.finish_lakify(db, d, ok=True, error=None)
    repo.finish_index(db, d, ok=True, error=None, activities=4)
    d = docs["r-gone"]
    repo.finish_download(db, [{"id": d["id"], "hash": d["hash"], "ok": False, "download_error": 404}])
    outcome(db, d, "download", "failed", "http_404", "HTTP 404 from the server")
    d = docs["r-flood"]
    repo.finish_download(db, [{"id": d["id"], "hash": d["hash"], **ok}])
    repo.set_schema_result(db, d["id"], d["hash"], valid=False, api_error=None)
    db.execute("UPDATE document SET downloaded = downloaded - interval '5 hours' WHERE id = %s", (d["id"],))
    db.execute("UPDATE publisher SET black_flag = %s WHERE org_id = 'XM-DAC-2'", (SEEN,))
    repo.record_telemetry(
        db,
        {
            "run_id": "scheduled__1",
            "dag_id": "iati_refresh",
            "stage": "download",
            "started_at": SEEN,
            "finished_at": datetime(2026, 3, 1, 12, 1, 0),
            "documents_in": 3,
            "documents_ok": 2,
            "documents_failed": 1,
        },
    )
    db.commit()
    return docs


@pytest.mark.parametrize("path", ROUTES)
def test_anonymous_api_requests_are_refused(client, seeded, path):
    response = client.get(path)
    assert response.status_code == 401
    assert "m-indexed" not in response.text


def test_anonymous_browser_is_sent_to_the_login_page(client, seeded):
    response = client.get("/iati-status/?state=parked", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/auth/login?next=")
    assert "%2Fiati-status%2F%3Fstate%3Dparked" in response.headers["location"]
    assert "m-indexed" not in response.text


def test_a_forged_token_is_refused(client, seeded):
    response = client.get("/iati-status/api/datasets", headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code in (401, 403)
    assert "m-indexed" not in response.text


def test_a_user_without_dag_access_is_forbidden(client, seeded):
    client.headers["Authorization"] = f"Bearer {token_for('outsider', None)}"
    for path in ROUTES:
        assert client.get(path).status_code == 403


def test_list_datasets(admin, seeded):
    body = admin.get("/iati-status/api/datasets").json()
    assert body["total"] == 5
    by_name = {r["name"]: r for r in body["items"]}
    assert [r["name"] for r in body["items"]] == ["<b>m-odd</b>", "m-indexed", "m-new", "r-flood", "r-gone"]
    assert (by_name["m-indexed"]["state"], by_name["m-indexed"]["availability"]) == ("indexed", "Yes")
    assert by_name["m-indexed"]["timestamps"]["solrize_end"] is not None
    assert (by_name["r-gone"]["state"], by_name["r-gone"]["availability"]) == ("parked", "No")
    assert "HTTP 404 (Not Found)" in by_name["r-gone"]["reason"]
    assert by_name["r-gone"]["last_error"]["code"] == "http_404"
    assert by_name["r-flood"]["reason"].startswith("The publisher is paused since 2026-03-01 12:00 UTC")
    assert by_name["m-new"]["state"] == "pending_download"


def test_filters_and_paging(admin, seeded):
    names = lambda params: [r["name"] for r in admin.get("/iati-status/api/datasets", params=params).json()["items"]]  # noqa: E731
    assert names({"publisher": "riverbend"}) == ["r-flood", "r-gone"]
    assert names({"publisher": "XM-DAC-2", "state": "parked"}) == ["r-gone"]
    assert names({"q": "indexed"}) == ["m-indexed"]
    page = admin.get("/iati-status/api/datasets", params={"limit": 2, "offset": 2}).json()
    assert (page["total"], [r["name"] for r in page["items"]]) == (5, ["m-new", "r-flood"])
    assert admin.get("/iati-status/api/datasets", params={"state": "bogus"}).status_code == 422
    assert admin.get("/iati-status/api/datasets", params={"limit": 100000}).status_code == 422


def test_one_dataset(admin, seeded):
    rows = admin.get("/iati-status/api/datasets/m-indexed").json()
    assert [r["id"] for r in rows] == [seeded["m-indexed"]["id"]]
    assert rows[0]["activities"]["indexed"] == 4
    assert admin.get(f"/iati-status/api/datasets/{seeded['r-gone']['id']}").json()[0]["name"] == "r-gone"
    assert admin.get("/iati-status/api/datasets/no-such-thing").status_code == 404


def test_summary(admin, seeded):
    body = admin.get("/iati-status/api/summary").json()
    assert body["datasets"]["total"] == 5
    assert body["datasets"]["by_state"]["parked"] == 1
    assert body["datasets"]["by_state"]["indexed"] == 1
    assert body["backlogs"]["download"] == 2  # m-new and the odd one; r-gone is parked
    assert body["parked"] == [{"stage": "download", "outcome": "gave_up", "code": "http_404", "n": 1}]
    assert [p["org_id"] for p in body["flagged_publishers"]] == ["XM-DAC-2"]
    assert body["last_run"]["run_id"] == "scheduled__1"
    assert body["last_run"]["stages"][0]["documents_failed"] == 1


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics(admin, seeded):
    response = admin.get("/iati-status/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    assert samples["registered_publishers"] == 2
    assert samples["registered_datasets"] == 5
    assert samples["flagged_publishers"] == 1
    assert samples["datasets_to_download"] == 2
    assert samples["datasets_to_index"] == 0
    assert samples['datasets_parked{code="http_404",outcome="gave_up",stage="download"}'] == 1
    assert samples['datasets_in_state{state="indexed"}'] == 1
    assert samples['last_run_documents{outcome="failed",stage="download"}'] == 1
    assert re.search(r"^# TYPE datasets_to_validate gauge$", response.text, re.M)


def test_page_with_the_ui_cookie(client, seeded):
    client.cookies.set("_token", token_for("admin", "admin"))
    response = client.get("/iati-status/", params={"publisher": "meadowlark"})
    assert response.status_code == 200
    html = response.text
    assert "IATI datasets" in html
    assert "m-indexed" in html
    assert "r-gone" not in html
    assert "&lt;b&gt;m-odd&lt;/b&gt;" in html
    assert "<b>m-odd</b>" not in html
    assert response.headers["content-security-policy"] == "frame-ancestors 'self'"
    detail = client.get("/iati-status/datasets/r-gone")
    assert detail.status_code == 200
    assert "HTTP 404 (Not Found)" in detail.text


def test_no_credentials_in_responses(admin, seeded, monkeypatch):
    body = admin.get("/iati-status/api/datasets").text
    assert "pa55word" not in body
    assert "https://example.org/1.xml" in body
    # A database that cannot be reached: a plain 503, nothing about the connection.
    monkeypatch.setenv(
        "AIRFLOW_CONN_REFRESHER_DB", f"postgresql://refresher:s3cret-pw@127.0.0.1:{services.free_port()}/refresher"
    )
    for path in ROUTES:
        response = admin.get(path)
        assert response.status_code == 503
        assert "s3cret" not in response.text
        assert "refresher:" not in response.text


def test_the_plugin_is_registered_as_a_menu_entry(admin):
    plugins = admin.get("/api/v2/plugins").json()["plugins"]
    ours = [p for p in plugins if p["name"] == "iati_status"]
    assert len(ours) == 1
    assert [(a["name"], a["url_prefix"]) for a in ours[0]["fastapi_apps"]] == [("IATI dataset status", "/iati-status")]
    views = ours[0]["external_views"]
    assert [(v["name"], v["category"], v["destination"], v["url_route"]) for v in views] == [
        ("IATI datasets", "browse", "nav", "iati-datasets")
    ]
    assert views[0]["href"].endswith("/iati-status/")
