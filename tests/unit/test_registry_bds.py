"""The Bulk Data Service reader: mapping, ETags, consistency gate, unusable answers; and the hook."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iati_refresher import connections
from iati_refresher.net import http_client
from iati_refresher.registry.base import RegistryInconsistent, RegistryUnavailable
from iati_refresher.registry.bds import BulkDataServiceSource, snapshot_from_indices
from iati_refresher.registry.ckan import CkanRegistrySource
from iati_refresher.registry.sources import build_source, registry_for
from iati_refresher.sample.server import hash_excluding_generated_timestamp
from iati_refresher.settings import Settings
from tests.standins.registry_server import RegistryStandIn, bds_dataset, bds_org

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry"
SETTINGS = Settings(
    allow_private_addresses=False, allowed_private_networks="127.0.0.1/32", user_agent="refresher-test/3"
)
ORG_A = "aaaaaaaa-0000-4000-8000-00000000000a"
ORG_B = "bbbbbbbb-0000-4000-8000-00000000000b"
HASH_1 = "1" * 40
HASH_2 = "2" * 40


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
def server() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as srv:
        srv.set_bds(
            [bds_org(ORG_A, "org-a", "Org A", "XX-A"), bds_org(ORG_B, "org-b", "Org B", "XX-B")],
            [
                bds_dataset("ds-1", "org-a-one", ORG_A, cached_url="https://bulk.example.org/1.xml", hash_=HASH_1),
                bds_dataset(
                    "ds-2",
                    "org-a-two",
                    ORG_A,
                    cached_url="https://bulk.example.org/2.xml",
                    hash_=HASH_2,
                    newer_names=True,
                ),
                bds_dataset("ds-3", "org-b-one", ORG_B, cached_url=None, hash_=None),
            ],
        )
        yield srv


def source(
    server: RegistryStandIn, dataset_path: str = "/datasets-minimal", org_path: str = "/reporting-orgs"
) -> BulkDataServiceSource:
    return BulkDataServiceSource(server.url, dataset_path, org_path, http_client(SETTINGS), SETTINGS, owns_client=True)


# --- mapping (fixture files) ---------------------------------------------------------------------------


def test_fixture_indices_map_to_publishers_and_datasets() -> None:
    snap = snapshot_from_indices(load("bds-datasets-minimal.json"), load("bds-reporting-orgs.json"), etag='"e1"')
    assert snap.source == "bds"
    assert snap.index_created == 1746440430
    assert snap.etag == '"e1"'
    publishers = {p["name"]: p for p in snap.publishers}
    assert publishers["alpha-aid"] == {
        "org_id": "0a1b2c3d-0000-4000-8000-000000000001",
        "name": "alpha-aid",
        "title": "Alpha Aid",
        "package_count": 2,
        "iati_id": "XX-TEST-ALPHA",
        "description": "A test publisher with two datasets.",
        "country_code": "GB",
    }
    # No human-readable name: the short name stands in; the newer identifier field is used.
    assert publishers["beta-relief"]["title"] == "beta-relief"
    assert publishers["beta-relief"]["iati_id"] == "XX-TEST-BETA"
    assert publishers["beta-relief"]["package_count"] == 1
    datasets = {d["id"]: d for d in snap.datasets}
    assert datasets["d0000000-0000-4000-8000-000000000001"] == {
        "id": "d0000000-0000-4000-8000-000000000001",
        "name": "alpha-aid-activities",
        "hash": "a" * 40,
        "url": "https://alpha.example.org/iati/activities.xml",
        "publisher": "0a1b2c3d-0000-4000-8000-000000000001",
        "cached_dataset_url": "https://bulk.example.org/alpha-aid/alpha-aid-activities.xml",
    }
    assert datasets["d0000000-0000-4000-8000-000000000002"]["cached_dataset_url"] == (
        "https://bulk.example.org/alpha-aid/alpha-aid-org.xml"
    )
    no_copy = datasets["d0000000-0000-4000-8000-000000000003"]
    assert (no_copy["hash"], no_copy["cached_dataset_url"]) == ("", None)
    assert len(snap.datasets) == 3


def test_malformed_entries_are_rejected_with_reasons_and_the_rest_kept() -> None:
    snap = snapshot_from_indices(load("bds-datasets-minimal.json"), load("bds-reporting-orgs.json"))
    reasons = sorted((r["kind"], r["reason"]) for r in snap.rejected)
    assert reasons == sorted(
        [
            ("publisher", "no short_name"),
            ("publisher", "not an object"),
            ("dataset", "malformed hash_excluding_generated_timestamp '../../not-a-hash'"),
            ("dataset", "no source_url"),
            ("dataset", "no id"),
            ("dataset", "duplicate dataset id d0000000-0000-4000-8000-000000000001"),
            ("dataset", "publisher 0a1b2c3d-0000-4000-8000-000000000003 is not in the publisher list"),
        ]
    )
    orphan = next(r for r in snap.rejected if r["reason"].startswith("publisher 0a1b"))
    assert orphan["record"]["short_name"] == "nameless-activities"
    broken = next(r for r in snap.rejected if r["reason"].startswith("malformed hash"))
    assert broken["record"]["short_name"] == "beta-relief-broken-hash"
    assert "last_known_good_dataset" not in broken["record"]  # only scalar fields are kept


def test_older_dict_keyed_dataset_index_is_accepted() -> None:
    index = load("bds-datasets-minimal.json")
    entries = index["datasets"][:3]
    index["datasets"] = {e["short_name"]: {k: v for k, v in e.items() if k != "short_name"} for e in entries}
    snap = snapshot_from_indices(index, load("bds-reporting-orgs.json"))
    assert sorted(d["name"] for d in snap.datasets) == ["alpha-aid-activities", "alpha-aid-org", "beta-relief-2024"]


@pytest.mark.parametrize(
    ("datasets_index", "orgs_index"),
    [({"datasets": "nope"}, {"reporting_orgs": []}), ([], {"reporting_orgs": []}), ({"datasets": []}, {})],
)
def test_wrong_shapes_are_unavailable(datasets_index: object, orgs_index: object) -> None:
    with pytest.raises(RegistryUnavailable):
        snapshot_from_indices(datasets_index, orgs_index)


# --- against the stand-in ------------------------------------------------------------------------------------


def test_fetch_reads_both_indices_with_the_user_agent(server: RegistryStandIn) -> None:
    src = source(server)
    snap = src.fetch(None)
    src.close()
    assert snap is not None
    assert [p["package_count"] for p in snap.publishers] == [2, 1]
    assert {d["id"]: d["hash"] for d in snap.datasets} == {"ds-1": HASH_1, "ds-2": HASH_2, "ds-3": ""}
    assert snap.etag
    assert snap.etag.startswith('"')
    assert snap.index_created == 1_728_570_515
    assert [r.path for r in server.requests] == ["/datasets-minimal", "/reporting-orgs"]
    assert {r.headers["user-agent"] for r in server.requests} == {"refresher-test/3"}


def test_unchanged_etag_returns_none_without_reading_the_org_index(server: RegistryStandIn) -> None:
    src = source(server)
    first = src.fetch(None)
    server.clear_log()
    assert src.fetch(first.etag) is None
    (request,) = server.requests
    assert request.path == "/datasets-minimal"
    assert request.headers["if-none-match"] == first.etag
    # The registry changes: a new ETag and a new snapshot.
    server.dataset_index["datasets"].pop()
    changed = src.fetch(first.etag)
    assert changed is not None
    assert changed.etag != first.etag
    assert len(changed.datasets) == 2


def test_indices_from_different_runs_are_inconsistent(server: RegistryStandIn) -> None:
    server.reporting_org_index["index_created_unix_timestamp"] += 60
    with pytest.raises(RegistryInconsistent, match="different Bulk Data Service runs") as info:
        source(server).fetch(None)
    assert info.value.etag is not None  # the caller may log it; the sync is skipped, not remembered


@pytest.mark.parametrize(
    ("dataset_path", "org_path", "words"),
    [
        ("/status/500", "/reporting-orgs", "HTTP 500"),
        ("/status/404", "/reporting-orgs", "HTTP 404"),
        ("/datasets-minimal", "/status/503", "HTTP 503"),
        ("/html-200", "/reporting-orgs", "did not return JSON (text/html"),
    ],
)
def test_error_statuses_and_non_json_are_unavailable(
    server: RegistryStandIn, dataset_path: str, org_path: str, words: str
) -> None:
    with pytest.raises(RegistryUnavailable, match=words.replace("(", r"\(")):
        source(server, dataset_path, org_path).fetch(None)


def test_a_truncated_index_is_unavailable(server: RegistryStandIn) -> None:
    server.truncate_dataset_index = True
    with pytest.raises(RegistryUnavailable, match="did not return JSON"):
        source(server).fetch(None)


def test_an_unreachable_registry_is_unavailable() -> None:
    with RegistryStandIn() as gone:
        url = gone.url
    src = BulkDataServiceSource(url, "/datasets-minimal", "/reporting-orgs", http_client(SETTINGS), SETTINGS)
    with pytest.raises(RegistryUnavailable, match="ConnectError"):
        src.fetch(None)


def test_a_registry_on_a_refused_address_is_unavailable(server: RegistryStandIn) -> None:
    settings = Settings()
    src = BulkDataServiceSource(server.url, "/datasets-minimal", "/reporting-orgs", http_client(settings), settings)
    with pytest.raises(RegistryUnavailable, match="refused address"):
        src.fetch(None)
    assert server.requests == []


# --- choosing the source: registry_for and the hook -----------------------------------------------------------


@pytest.fixture
def environment_connections_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections from AIRFLOW_CONN_* variables only (as the CLI reads them), not Airflow's store."""
    monkeypatch.setattr(connections, "_ENVIRONMENT_ONLY", True)


@pytest.mark.usefixtures("environment_connections_only")
def test_registry_for_uses_the_connection_when_configured(
    server: RegistryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_IATI_REGISTRY",
        json.dumps({"conn_type": "http", "host": server.url, "extra": {"dataset_index_path": "/datasets-minimal"}}),
    )
    src = registry_for(SETTINGS.replace(bds_url="http://127.0.0.1:9"))
    assert isinstance(src, BulkDataServiceSource)
    assert src.dataset_index_url == f"{server.url}/datasets-minimal"
    assert len(src.fetch(None).datasets) == 3
    src.close()


@pytest.mark.usefixtures("environment_connections_only")
def test_registry_for_falls_back_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_IATI_REGISTRY", raising=False)
    bds = registry_for(SETTINGS.replace(bds_url="https://bds.example.org/"))
    assert isinstance(bds, BulkDataServiceSource)
    assert bds.reporting_org_index_url == "https://bds.example.org/reporting-orgs"
    ckan = registry_for(SETTINGS.replace(registry_source="ckan", ckan_url="https://ckan.example.org"))
    assert isinstance(ckan, CkanRegistrySource)
    assert ckan.api_url == "https://ckan.example.org/api/3/action/"
    with pytest.raises(ValueError, match="registry_source"):
        build_source(SETTINGS.replace(registry_source="ftp"), "https://x.example.org")


def test_the_airflow_hook_builds_the_source_from_its_connection(
    server: RegistryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iati_refresher.hooks.registry import IatiRegistryHook

    monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", json.dumps({"conn_type": "http", "host": server.url}))
    hook = IatiRegistryHook(settings=SETTINGS)
    assert IatiRegistryHook.default_conn_name == "iati_registry"
    assert IatiRegistryHook.conn_type == "iati_registry"
    assert "host" in _behaviour("iati_registry")["relabeling"]
    src = hook.get_conn()
    assert isinstance(src, BulkDataServiceSource)
    assert src.fetch(None).source == "bds"
    src.close()


# --- the sample registry (what `make run` serves) ---------------------------------------------------------------


def test_the_bds_hash_ignores_only_the_generated_datetime() -> None:
    one = b'<iati-activities version="2.03" generated-datetime="2025-01-01T00:00:00Z"><x/></iati-activities>'
    two = one.replace(b"2025-01-01T00:00:00Z", b"2026-06-30T12:34:56+01:00")
    changed = one.replace(b"<x/>", b"<y/>")
    assert hash_excluding_generated_timestamp(one) == hash_excluding_generated_timestamp(two)
    assert hash_excluding_generated_timestamp(one) != hash_excluding_generated_timestamp(changed)
    # The attribute goes, the space before it stays (the BDS rule).
    assert (
        hash_excluding_generated_timestamp(one)
        == hashlib.sha1(b'<iati-activities version="2.03" ><x/></iati-activities>').hexdigest()
    )


def test_the_sample_server_runs_as_a_command_with_conditional_indices() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "iati_refresher.sample.server", "--port", "0", "--print-url"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        settings = Settings(allow_private_addresses=True)
        with http_client(settings) as client:
            datasets = client.get(f"{url}/datasets-minimal")
            orgs = client.get(f"{url}/reporting-orgs")
            assert datasets.status_code == orgs.status_code == 200
            assert datasets.json()["index_created_unix_timestamp"] == orgs.json()["index_created_unix_timestamp"]
            etag = datasets.headers["etag"]
            assert client.head(f"{url}/datasets-minimal", headers={"If-None-Match": etag}).status_code == 304
            assert client.head(f"{url}/datasets-minimal", headers={"If-None-Match": '"other"'}).status_code == 200
            snap = build_source(settings, url, client=client).fetch(None)
            assert snap.rejected == []
            for ds in snap.datasets:
                if not ds["hash"]:
                    continue
                body = client.get(ds["cached_dataset_url"]).content
                encoding = "cp1252" if ds["name"] == "riverbend-sanitation" else "utf-8"
                assert ds["hash"] == hash_excluding_generated_timestamp(body, encoding)
        assert sorted(p["name"] for p in snap.publishers) == ["condor-verde", "meadowlark", "riverbend"]
        assert sum(1 for ds in snap.datasets if ds["hash"] == "" and ds["cached_dataset_url"] is None) == 1
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == 0


def _behaviour(connection_type: str) -> dict:
    """The connection form's field behaviour, as the provider registers it."""
    from iati_refresher.provider import get_provider_info

    [entry] = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == connection_type]
    return entry["ui-field-behaviour"]
