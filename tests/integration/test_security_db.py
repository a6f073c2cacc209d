"""Security properties with real services: where downloads may go, hostile registry data
in SQL, and the status page behind the Airflow login.

Downloads run through the pipeline itself (``pipeline.run_batch``) with the default
settings: nothing private is reachable.  The registry stand-in listens on loopback, so the
sync alone is allowed to reach it (explicit settings for that call).
"""

from __future__ import annotations

import pytest

from iati_refresher import connections, net, pipeline
from iati_refresher.db import repository as repo
from iati_refresher.iati.identifiers import identifier_hash
from iati_refresher.settings import Settings
from tests.standins.registry_server import RegistryStandIn, bds_dataset, bds_org
from tests.support import hostile, services

ORG = "dddddddd-0000-4000-8000-0000000000d4"
TARGET = "/files/target.xml"


@pytest.fixture
def registry(pg_dbname, monkeypatch, tmp_path):
    monkeypatch.setattr(connections, "_PRELOADED", {})
    for key, value in {
        "AIRFLOW_CONN_REFRESHER_DB": services.airflow_uri(pg_dbname),
        "REFRESHER_LOCAL_BLOB_DIR": str(tmp_path / "blobs"),
        "REFRESHER_HTTP_TIMEOUT_S": "2",
        "REFRESHER_DOWNLOAD_TIMEOUT_S": "3",
        "REFRESHER_RETRY_BASE_DELAY_S": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("REFRESHER_ALLOW_PRIVATE_ADDRESSES", raising=False)
    with RegistryStandIn() as server:
        monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", server.url)
        server.add_dataset_file(TARGET.rsplit("/", 1)[1], hostile.utf8(hostile.activity("XX-HOSTILE-SSRF")))
        yield server


def sync(server: RegistryStandIn, urls: dict[str, str]) -> None:
    datasets = [
        bds_dataset(doc_id, doc_id, ORG, cached_url=url, hash_=identifier_hash(doc_id)) for doc_id, url in urls.items()
    ]
    server.set_bds([bds_org(ORG, "org-d")], datasets)
    result = pipeline.sync_registry("scheduled__sync", settings=Settings.from_env(allow_private_addresses=True))
    assert result["added"] == len(urls)


def download(ids: list[str]) -> None:
    pipeline.run_batch({"stage": "download", "ids": ids, "key": "0000"}, run_id="scheduled__dl", dag_id="iati_refresh")


def download_rows(db) -> dict[str, dict]:
    db.rollback()
    rows = db.execute(
        """SELECT d.id, d.download_error, d.downloaded, s.outcome, s.code, s.message
             FROM document d JOIN document_stage s ON s.document_id = d.id AND s.stage = 'download'"""
    ).fetchall()
    return {r["id"]: r for r in rows}


def test_downloads_to_private_addresses_are_refused_by_default(registry: RegistryStandIn, db, monkeypatch) -> None:
    assert Settings.from_env().allow_private_addresses is False
    port = registry.port
    urls = {
        "loopback": f"http://127.0.0.1:{port}{TARGET}",
        "loopback-other": f"http://127.0.0.2:{port}{TARGET}",
        "localhost-name": f"http://localhost:{port}{TARGET}",
        "ipv6-loopback": f"http://[::1]:{port}{TARGET}",
        "ipv4-mapped": f"http://[::ffff:127.0.0.1]:{port}{TARGET}",
        "decimal-ip": f"http://2130706433:{port}{TARGET}",
        "unspecified": f"http://0.0.0.0:{port}{TARGET}",
        "private-10": "http://10.1.2.3/iati.xml",
        "shared-cgnat": "http://100.64.0.1/iati.xml",
        "cloud-metadata": "http://169.254.169.254/latest/meta-data/",
        "file-scheme": "file:///etc/passwd",
        "gopher-scheme": f"gopher://127.0.0.1:{port}/_x",
        "dns-rebinding": f"http://localhost:{port}{TARGET}",
    }
    sync(registry, urls)
    before = len(registry.requests)
    download([d for d in urls if d != "dns-rebinding"])
    # DNS answers a public address when checked, then the connection lands on loopback.
    monkeypatch.setattr(net, "resolve_host", lambda host, port: ["93.184.216.34"])
    download(["dns-rebinding"])

    rows = download_rows(db)
    assert set(rows) == set(urls)
    for doc_id, row in rows.items():
        scheme = doc_id.endswith("-scheme")
        assert row["code"] == ("unsupported_scheme" if scheme else "refused_address"), doc_id
        assert (row["outcome"], row["download_error"], row["downloaded"]) == ("gave_up", 3, None), doc_id
        assert ("scheme" if scheme else "not a public address") in row["message"], doc_id
    assert registry.requests[before:] == [], "no request reached the loopback server"


def test_redirects_to_private_addresses_are_refused(registry: RegistryStandIn, db, monkeypatch) -> None:
    """The registry host is allowed (as a deployment with an internal mirror would list it);
    a redirect from there to another private address is not."""
    monkeypatch.setenv("REFRESHER_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1/32")
    with RegistryStandIn(host="127.0.0.2") as private:
        private.add_dataset_file("secret.xml", b"<internal/>")
        urls = {
            "allowed": registry.url + TARGET,
            "redirected": f"{registry.url}/redirect?to=http://127.0.0.2:{private.port}/files/secret.xml",
            "redirected-301": f"{registry.url}/redirect?status=301&to=http://[::1]:{registry.port}{TARGET}",
        }
        sync(registry, urls)
        download(list(urls))
        rows = download_rows(db)
        assert rows["allowed"]["outcome"] == "ok" and rows["allowed"]["downloaded"] is not None
        for doc_id in ("redirected", "redirected-301"):
            assert (rows[doc_id]["outcome"], rows[doc_id]["code"], rows[doc_id]["download_error"]) == (
                "gave_up",
                "refused_address",
                3,
            ), doc_id
        assert private.requests == [], "the private server was never contacted"


# --- hostile registry metadata is data, never SQL ---------------------------------------------------

HOSTILE_NAMES = [
    "x'); DROP TABLE document; --",
    "100%_done\\",
    'O\'Brien "quoted" ; SELECT pg_sleep(10)',
]


def test_hostile_names_from_the_registry_are_stored_and_searched_as_plain_data(registry, db) -> None:
    datasets = [bds_dataset(f"id-{n}", name, ORG, cached_url=None, hash_=None) for n, name in enumerate(HOSTILE_NAMES)]
    registry.set_bds([bds_org(ORG, "org'; DELETE FROM publisher; --")], datasets)
    pipeline.sync_registry("scheduled__sync", settings=Settings.from_env(allow_private_addresses=True))
    names = {r["name"] for r in db.execute("SELECT name FROM document").fetchall()}
    assert names == set(HOSTILE_NAMES)
    assert db.execute("SELECT name FROM publisher").fetchone()["name"] == "org'; DELETE FROM publisher; --"
    for name in HOSTILE_NAMES:
        assert [r["name"] for r in repo.find_documents(db, ids_or_names=[name])] == [name]
        assert [r["name"] for r in repo.document_status_rows(db, query=name)] == [name]
    # LIKE wildcards in a search are literal characters
    assert [r["name"] for r in repo.document_status_rows(db, query="%_")] == ["100%_done\\"]
    assert repo.document_status_rows(db, query="_one") == []


# --- the status page needs the Airflow login ------------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_app():
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from airflow.settings import engine
    from airflow.utils import db as airflow_db
    from sqlalchemy import inspect

    if not inspect(engine).has_table("revoked_token"):
        airflow_db.resetdb()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "security-tests-" + "k" * 64)
        app = create_app("core")
        yield app
    purge_cached_app()


def status_routes(app) -> list[str]:
    """Every GET route the status plugin mounts, with path parameters filled in."""
    from starlette.routing import Mount

    mounted = [r for r in app.routes if isinstance(r, Mount) and r.path == "/iati-status"]
    assert len(mounted) == 1, "the plugin app is mounted under /iati-status"
    paths = []
    for route in mounted[0].app.routes:
        if "GET" in (getattr(route, "methods", None) or set()):
            paths.append("/iati-status" + route.path.replace("{key}", "some-dataset"))
    return paths


def test_every_status_route_needs_the_airflow_login(airflow_app, pg_dbname, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setattr(connections, "_PRELOADED", {})
    monkeypatch.setenv("AIRFLOW_CONN_REFRESHER_DB", services.airflow_uri(pg_dbname))
    client = TestClient(airflow_app)
    routes = status_routes(airflow_app)
    assert {"/iati-status/", "/iati-status/api/datasets", "/iati-status/metrics"} <= set(routes)
    public = {"/iati-status/openapi.json"}  # the API's description, no data
    for path in routes:
        response = client.get(path, follow_redirects=False)
        if path in public:
            assert response.status_code == 200
            continue
        assert response.status_code in (401, 303), f"{path} answered {response.status_code} without a login"
        if response.status_code == 303:
            assert response.headers["location"].startswith("/auth/login"), path
