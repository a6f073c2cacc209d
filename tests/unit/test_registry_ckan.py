"""The CKAN (old IATI Registry) reader against the stand-in's CKAN API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iati_refresher.net import http_client
from iati_refresher.registry.base import RegistryUnavailable
from iati_refresher.registry.ckan import CkanRegistrySource, map_organisation, map_package
from iati_refresher.settings import Settings
from tests.standins.registry_server import RegistryStandIn, ckan_organisation, ckan_package

SETTINGS = Settings(
    allow_private_addresses=False,
    allowed_private_networks="127.0.0.1/32",
    user_agent="refresher-test/4",
    ckan_page_size=3,
    ckan_request_interval_s=0.0,
)
ORGS = [
    ckan_organisation(f"org-{i}", f"publisher-{i}", f"Publisher {i}", iati_id=f"XX-P{i}", country="KE")
    for i in range(5)
]


def packages(count: int) -> list[dict]:
    return [
        ckan_package(
            f"pkg-{i}",
            f"publisher-{i % 5}-file-{i}",
            f"org-{i % 5}",
            url=f"https://publisher-{i % 5}.example.org/{i}.xml",
            hash_=f"{i:040x}",
        )
        for i in range(count)
    ]


@pytest.fixture
def server() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as srv:
        srv.ckan_organisations = list(ORGS)
        srv.ckan_packages = packages(7)
        srv.ckan_all_fields_max = 2
        yield srv


def reader(server: RegistryStandIn, settings: Settings = SETTINGS, **kwargs) -> CkanRegistrySource:
    return CkanRegistrySource(server.url, http_client(settings), settings, owns_client=True, **kwargs)


def test_pages_through_packages_and_organisations(server: RegistryStandIn) -> None:
    snap = reader(server).fetch(None)
    assert snap.source == "ckan"
    assert (snap.etag, snap.index_created) == (None, None)
    assert sorted(d["id"] for d in snap.datasets) == [f"pkg-{i}" for i in range(7)]
    assert [r.param("start") for r in server.requests_to("/api/3/action/package_search")] == ["0", "3", "6"]
    assert {r.param("rows") for r in server.requests_to("/api/3/action/package_search")} == {"3"}
    # all_fields pages are capped at 2 by the server: offsets follow what came back.
    org_requests = server.requests_to("/api/3/action/organization_list")
    assert [r.param("offset") for r in org_requests] == ["0", "2", "4", "5"]
    assert all(r.param("all_fields") == "true" for r in org_requests)
    assert server.requests_to("/api/3/action/organization_show") == []
    assert {r.headers["user-agent"] for r in server.requests} == {"refresher-test/4"}


def test_maps_packages_and_organisations(server: RegistryStandIn) -> None:
    snap = reader(server).fetch(None)
    pkg = next(d for d in snap.datasets if d["id"] == "pkg-6")
    assert pkg == {
        "id": "pkg-6",
        "name": "publisher-1-file-6",
        "hash": f"{6:040x}",
        "url": "https://publisher-1.example.org/6.xml",
        "publisher": "org-1",
        "cached_dataset_url": "https://publisher-1.example.org/6.xml",
    }
    pub = next(p for p in snap.publishers if p["org_id"] == "org-1")
    assert pub == {
        "org_id": "org-1",
        "name": "publisher-1",
        "title": "Publisher 1",
        "package_count": 2,
        "iati_id": "XX-P1",
        "description": "Publisher 1 publishes IATI data.",
        "state": "active",
        "country_code": "KE",
    }
    assert next(p for p in snap.publishers if p["org_id"] == "org-4")["package_count"] == 1


@pytest.mark.parametrize("behaviour", ["ignored", "error"])
def test_falls_back_to_organization_show_per_name(server: RegistryStandIn, behaviour: str) -> None:
    server.ckan_all_fields = behaviour
    snap = reader(server).fetch(None)
    assert sorted(p["name"] for p in snap.publishers) == [f"publisher-{i}" for i in range(5)]
    shown = [r.param("id") for r in server.requests_to("/api/3/action/organization_show")]
    assert shown == [f"publisher-{i}" for i in range(5)]
    assert len(snap.datasets) == 7


def test_a_count_that_never_completes_is_unavailable(server: RegistryStandIn) -> None:
    server.ckan_count = 10  # announces more than it will ever list
    with pytest.raises(RegistryUnavailable, match="announced 10 packages but only 7"):
        reader(server).fetch(None)
    assert len(server.requests_to("/api/3/action/package_search")) == 4  # the 4th page came back empty


def test_a_pager_that_repeats_itself_stops(server: RegistryStandIn) -> None:
    server.ckan_ignore_start = True  # every page is the first page
    with pytest.raises(RegistryUnavailable, match="only 3 could be read"):
        reader(server).fetch(None)
    assert len(server.requests_to("/api/3/action/package_search")) == 2


def test_a_growing_registry_is_read_to_the_end(server: RegistryStandIn) -> None:
    server.ckan_packages = packages(12)
    snap = reader(server, SETTINGS.replace(ckan_page_size=5)).fetch(None)
    assert len(snap.datasets) == 12


def test_requests_are_paced(server: RegistryStandIn) -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    src = reader(server, SETTINGS.replace(ckan_request_interval_s=1.5), sleep=sleep, clock=lambda: now[0])
    src.fetch(None)
    # One call per request, each made 1.5 s (fake time) after the previous one finished.
    assert len(sleeps) == len(server.requests) - 1
    assert sleeps == [1.5] * len(sleeps)


def test_no_pause_is_added_when_requests_are_already_slow(server: RegistryStandIn) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def clock() -> float:
        now[0] += 2.0  # every look at the clock: two seconds later
        return now[0]

    reader(server, SETTINGS.replace(ckan_request_interval_s=1.0), sleep=sleeps.append, clock=clock).fetch(None)
    assert sleeps == []


def test_malformed_packages_are_rejected_not_fatal(server: RegistryStandIn) -> None:
    broken = [
        {"id": "pkg-x", "name": "no-resources", "owner_org": "org-0", "resources": []},
        ckan_package("pkg-y", "bad-hash", "org-0", url="https://x.example.org/y.xml", hash_="md5:abc"),
        ckan_package("pkg-z", "ghost", "org-unknown", url="https://x.example.org/z.xml"),
    ]
    server.ckan_packages = packages(2) + broken
    snap = reader(server).fetch(None)
    assert sorted(d["id"] for d in snap.datasets) == ["pkg-0", "pkg-1"]
    assert sorted(r["reason"] for r in snap.rejected) == [
        "malformed resource hash 'md5:abc'",
        "no resource",
        "publisher org-unknown is not in the publisher list",
    ]


def test_an_unhashed_resource_keeps_an_empty_hash() -> None:
    record = map_package(ckan_package("pkg-1", "never-archived", "org-0", url="https://x.example.org/1.xml"))
    assert isinstance(record, dict)
    assert record["hash"] == ""


def test_organisation_extras_list_is_read() -> None:
    raw = {
        "id": "org-9",
        "name": "extras-org",
        "title": "",
        "display_name": "Extras Org",
        "extras": [{"key": "publisher_iati_id", "value": "XX-EXTRA"}, {"key": "publisher_country", "value": "NP"}],
    }
    assert map_organisation(raw) == {
        "org_id": "org-9",
        "name": "extras-org",
        "title": "Extras Org",
        "package_count": 0,
        "iati_id": "XX-EXTRA",
        "country_code": "NP",
    }


def test_a_ckan_error_is_unavailable(server: RegistryStandIn) -> None:
    src = CkanRegistrySource(f"{server.url}/status/500", http_client(SETTINGS), SETTINGS)
    with pytest.raises(RegistryUnavailable, match="HTTP"):
        src.fetch(None)


def test_api_root_or_site_root_both_work(server: RegistryStandIn) -> None:
    src = CkanRegistrySource(f"{server.url}/api/3/action/", http_client(SETTINGS), SETTINGS)
    assert src.api_url == f"{server.url}/api/3/action/"
    assert len(src.fetch(None).datasets) == 7
