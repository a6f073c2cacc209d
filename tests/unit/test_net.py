"""Safe HTTP: address policy, redirects checked hop by hop, the connected peer checked again."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections.abc import Iterator

import httpx
import pytest

from iati_refresher import net
from iati_refresher.settings import Settings
from tests.standins.registry_server import RegistryStandIn

LOOPBACK_ONLY = Settings(allow_private_addresses=False, allowed_private_networks="127.0.0.1/32")
NOTHING_PRIVATE = Settings(allow_private_addresses=False)


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: if a guard ever failed, no test may reach beyond this machine."""
    original = socket.create_connection

    def guarded(address, *args, **kwargs):
        host = address[0]
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"a test tried to connect to {host}")
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


def request_once(client: httpx.Client, url: str, settings: Settings) -> int:
    """Open ``url`` the safe way; its status."""
    with net.open_stream(client, url, settings) as response:
        return response.status_code


@pytest.fixture
def server() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as srv:
        srv.add_file("/files/a.xml", b"<iati-activities/>")
        yield srv


@pytest.fixture
def other_server() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as srv:
        srv.add_file("/elsewhere.xml", b"<iati-organisations/>")
        yield srv


# --- which addresses are public -----------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.10",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "fec0::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
        "2001:db8::1",  # documentation
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not net.is_public_address(address)
    assert not net.AddressPolicy().allows(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.4.4", "2606:4700:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::1"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert net.is_public_address(address)
    assert net.AddressPolicy().allows(address)


def test_policy_allows_listed_networks_and_everything_when_private_allowed() -> None:
    policy = net.AddressPolicy.from_settings(Settings(allowed_private_networks="10.20.0.0/16, ::1/128"))
    assert policy.allows("10.20.3.4")
    assert policy.allows("::ffff:10.20.3.4")
    assert policy.allows("::1")
    assert not policy.allows("10.21.0.1")
    assert not policy.allows("127.0.0.1")
    assert net.AddressPolicy.from_settings(Settings(allow_private_addresses=True)).allows("10.21.0.1")


# --- URL checks before connecting ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.org/a.xml", "file:///etc/passwd", "gopher://example.org/", "a.xml"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(net.RefusedTarget) as info:
        net.check_url(url, Settings(allow_private_addresses=True))
    assert info.value.reason in ("scheme", "url")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]:8080/",
        "https://169.254.169.254/latest",
        "http://[::ffff:7f00:1]/",
        "http://0.0.0.0:80/",
    ],
)
def test_private_ip_literals_are_refused(url: str) -> None:
    with pytest.raises(net.RefusedTarget) as info:
        net.check_url(url, NOTHING_PRIVATE)
    assert info.value.reason == "address"


def test_a_host_name_is_judged_by_every_address_it_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"public.test": ["93.184.216.34"], "mixed.test": ["93.184.216.34", "10.0.0.7"]}
    monkeypatch.setattr(net, "resolve_host", lambda host, port: answers[host])
    assert net.check_url("https://public.test/a.xml", NOTHING_PRIVATE).host == "public.test"
    with pytest.raises(net.RefusedTarget, match=r"mixed\.test \(10\.0\.0\.7\)"):
        net.check_url("https://mixed.test/a.xml", NOTHING_PRIVATE)


def test_an_unresolvable_host_is_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(net, "resolve_host", fail)
    with pytest.raises(httpx.ConnectError, match="cannot resolve"):
        net.check_url("https://nowhere.test/", NOTHING_PRIVATE)


# --- live requests against the stand-in ------------------------------------------------------------------


def test_a_host_name_that_resolves_to_loopback_is_refused_before_any_request(server: RegistryStandIn) -> None:
    with net.http_client(NOTHING_PRIVATE) as client, pytest.raises(net.RefusedTarget) as info:
        request_once(client, f"http://localhost:{server.port}/files/a.xml", NOTHING_PRIVATE)
    assert info.value.reason == "address"
    assert "localhost" in str(info.value)
    assert server.requests == []


def test_allowed_network_is_reached_with_user_agent_and_reused_connection(server: RegistryStandIn) -> None:
    settings = LOOPBACK_ONLY.replace(user_agent="refresher-test/1")
    with net.http_client(settings) as client:
        for _ in range(2):
            with net.open_stream(client, f"{server.url}/files/a.xml", settings) as response:
                assert response.status_code == 200
                assert response.read() == b"<iati-activities/>"
    assert [r.headers["user-agent"] for r in server.requests] == ["refresher-test/1"] * 2
    assert server.requests[0].client_port == server.requests[1].client_port


def test_redirect_to_another_host_and_port_is_followed(server: RegistryStandIn, other_server: RegistryStandIn) -> None:
    target = f"{other_server.url}/elsewhere.xml"
    with (
        net.http_client(LOOPBACK_ONLY) as client,
        net.open_stream(client, f"{server.url}/redirect?to={target}", LOOPBACK_ONLY) as response,
    ):
        assert response.status_code == 200
        assert str(response.url) == target
        assert response.read() == b"<iati-organisations/>"
    assert len(server.requests_to("/redirect")) == 1
    assert len(other_server.requests_to("/elsewhere.xml")) == 1


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.255.255.1/internal", "address"),
        ("http://169.254.169.254/latest/meta-data", "address"),
        ("http://[::ffff:a00:1]/", "address"),
        ("ftp://files.example.org/a.xml", "scheme"),
    ],
)
def test_redirect_to_a_refused_target_is_not_followed(server: RegistryStandIn, target: str, reason: str) -> None:
    with net.http_client(LOOPBACK_ONLY) as client, pytest.raises(net.RefusedTarget) as info:
        request_once(client, f"{server.url}/redirect?to={target}", LOOPBACK_ONLY)
    assert info.value.reason == reason


def test_redirect_to_a_host_name_resolving_to_a_refused_address(
    server: RegistryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = net.resolve_host

    def resolve(host: str, port: int) -> list[str]:
        return ["10.9.8.7"] if host == "intranet.test" else real(host, port)

    monkeypatch.setattr(net, "resolve_host", resolve)
    with net.http_client(LOOPBACK_ONLY) as client, pytest.raises(net.RefusedTarget, match=r"intranet\.test"):
        request_once(client, f"{server.url}/redirect?to=http://intranet.test/", LOOPBACK_ONLY)


def test_redirects_are_limited(server: RegistryStandIn) -> None:
    with net.http_client(LOOPBACK_ONLY) as client, pytest.raises(net.RedirectLimitExceeded) as info:
        request_once(client, f"{server.url}/redirect-loop", LOOPBACK_ONLY)
    assert info.value.status == 302
    assert len(server.requests_to("/redirect-loop")) == net.MAX_REDIRECTS + 1


def test_dns_rebinding_is_caught_at_connect_before_anything_is_sent(
    server: RegistryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check before connecting sees a public address; the connection then lands on loopback.
    monkeypatch.setattr(net, "resolve_host", lambda host, port: ["93.184.216.34"])
    with net.http_client(NOTHING_PRIVATE) as client, pytest.raises(net.RefusedTarget) as info:
        request_once(client, f"http://localhost:{server.port}/files/a.xml", NOTHING_PRIVATE)
    assert info.value.reason == "address"
    assert "127.0.0.1" in str(info.value) or "::1" in str(info.value)
    assert server.requests == []


def test_a_foreign_client_is_checked_on_the_response_before_its_body(
    server: RegistryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain httpx client has no guarded backend: the peer check on the response still refuses it.
    monkeypatch.setattr(net, "resolve_host", lambda host, port: ["93.184.216.34"])
    with httpx.Client() as client, pytest.raises(net.RefusedTarget) as info:
        request_once(client, f"http://localhost:{server.port}/files/a.xml", NOTHING_PRIVATE)
    assert info.value.reason == "address"


def test_peer_address_is_read_from_the_network_stream(server: RegistryStandIn) -> None:
    settings = Settings(allow_private_addresses=True)
    url = f"{server.url}/files/a.xml"
    with net.http_client(settings) as client, net.open_stream(client, url, settings) as response:
        assert net.peer_address(response) == "127.0.0.1"


def test_read_capped_refuses_a_large_body(server: RegistryStandIn) -> None:
    with net.http_client(LOOPBACK_ONLY) as client:
        with (
            net.open_stream(client, f"{server.url}/oversize/300000", LOOPBACK_ONLY) as response,
            pytest.raises(net.ResponseTooLarge),
        ):
            net.read_capped(response, 100_000)
        with net.open_stream(client, f"{server.url}/oversize/3000", LOOPBACK_ONLY) as response:
            assert len(net.read_capped(response, 100_000)) == 3000


# --- bounded decompression --------------------------------------------------------------------------------


def test_inflate_yields_bounded_pieces_of_a_highly_compressible_body() -> None:
    original = b"\0" * (5 * net.DECODE_PIECE + 17)
    packed = gzip.compress(original)
    pieces = list(net.inflate([packed[i : i + 1000] for i in range(0, len(packed), 1000)], 16 + zlib.MAX_WBITS))
    assert max(len(p) for p in pieces) <= net.DECODE_PIECE
    assert b"".join(pieces) == original


def test_inflate_reads_every_gzip_member() -> None:
    packed = gzip.compress(b"<a>") + gzip.compress(b"</a>")
    assert b"".join(net.inflate([packed], 16 + zlib.MAX_WBITS)) == b"<a></a>"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_inflate_refuses_damaged_data(damage: str) -> None:
    packed = gzip.compress(b"<iati-activities/>" * 100)
    data = packed[: len(packed) // 2] if damage == "truncated" else packed[:10] + b"\xff" * 20 + packed[30:]
    with pytest.raises(net.UndecodableBody):
        b"".join(net.inflate([data], 16 + zlib.MAX_WBITS))


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS])
def test_deflate_content_encoding_zlib_or_raw(wbits: int) -> None:
    body = b"<iati-activities version='2.03'/>"
    compressor = zlib.compressobj(wbits=wbits)
    packed = compressor.compress(body) + compressor.flush()
    response = httpx.Response(200, headers={"content-encoding": "deflate"}, stream=httpx.ByteStream(packed))
    assert b"".join(net.iter_decoded(response)) == body


def test_ungzip_only_touches_gzip_bodies() -> None:
    assert b"".join(net.ungzip_if_gzip([b"\x1f", b"\x8b" + gzip.compress(b"x")[2:]])) == b"x"
    assert b"".join(net.ungzip_if_gzip([b"<", b"a/>"])) == b"<a/>"
    assert b"".join(net.ungzip_if_gzip([])) == b""
