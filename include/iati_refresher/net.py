"""Outbound HTTP that cannot be turned against the machine it runs on.

Dataset URLs come from a registry that hundreds of publishers feed, so every request the
refresher makes goes through this module:

* :func:`http_client` builds the one kind of ``httpx.Client`` the package uses: timeouts
  from settings, the refresher's User-Agent, pooled connections, no redirects followed by
  httpx, no proxies or ``.netrc`` credentials taken from the environment.
* :func:`open_stream` follows redirects itself (at most :data:`MAX_REDIRECTS`) and checks
  every hop: only ``http``/``https``, and the host must not resolve to a loopback, private,
  link-local, multicast, reserved or unspecified address (IPv4 and IPv6, including
  IPv4-mapped, 6to4 and NAT64 forms) unless ``settings.allow_private_addresses`` is set or
  the address is in ``settings.allowed_private_networks``.
* DNS can answer differently between that check and the connection (DNS rebinding), so
  the address actually connected to is checked again: by the client's network backend
  right after the TCP connect, before a single request byte is sent, and once more on the
  response's ``network_stream`` before its body is read (which also covers clients that
  were not built here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpcore
import httpx

from iati_refresher.settings import Settings

MAX_REDIRECTS = 5
DEFAULT_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30)
# Content codings we decode ourselves, in bounded pieces (httpx inflates a whole network
# chunk at once: 64 KiB of gzip can become 64 MiB).  Only these are advertised.
ACCEPT_ENCODING = "gzip, deflate"
DECODE_PIECE = 256 * 1024
GZIP_MAGIC = b"\x1f\x8b"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOWED_SCHEMES = ("http", "https")
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RefusalReason = Literal["scheme", "address", "url"]


class RefusedTarget(Exception):
    """The refresher will not fetch this URL.

    :param reason: ``scheme`` (not http/https), ``address`` (the host is or resolves to a
        refused address) or ``url`` (malformed, no host).
    """

    def __init__(self, reason: RefusalReason, message: str, url: str = ""):
        super().__init__(message)
        self.reason = reason
        self.url = url


class RedirectLimitExceeded(Exception):
    """More than :data:`MAX_REDIRECTS` redirects; ``status`` is the last redirect's status."""

    def __init__(self, message: str, status: int, url: str):
        super().__init__(message)
        self.status = status
        self.url = url


class ResponseTooLarge(Exception):
    """A body read by :func:`read_capped` went over its byte limit."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


# --- which addresses may be reached ------------------------------------------------------


def _parse_ip(address: str | IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return address
    # Link-local IPv6 peers come back with a zone ("fe80::1%eth0"); the zone is not part of the address.
    return ipaddress.ip_address(address.split("%", 1)[0])


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str | IPAddress) -> bool:
    """True when ``address`` is a globally routable unicast address.

    Loopback, private, shared (CGNAT), link-local, multicast, reserved, unspecified and
    documentation ranges are not public; an IPv6 address that embeds an IPv4 address
    (``::ffff:127.0.0.1``, 6to4, NAT64) is judged by the embedded address too.
    """
    ip = _parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if ip.ipv4_mapped is not None:
            # The socket talks IPv4 to the mapped address: only that address matters.
            return is_public_address(ip.ipv4_mapped)
        if inner is not None and not is_public_address(inner):
            return False
        if ip.is_site_local:
            return False
    if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return ip.is_global


@dataclass(frozen=True)
class AddressPolicy:
    """Which peer addresses a connection may have.

    :param allow_private: every address is allowed (tests, ``make run``).
    :param allowed_networks: non-public networks that are allowed all the same.
    """

    allow_private: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        networks = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in settings.allowed_private_networks.split(",")
            if part.strip()
        )
        return cls(allow_private=settings.allow_private_addresses, allowed_networks=networks)

    def allows(self, address: str | IPAddress) -> bool:
        if self.allow_private:
            return True
        ip = _parse_ip(address)
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(c in net for c in candidates for net in self.allowed_networks if c.version == net.version):
            return True
        return is_public_address(ip)

    def check(self, address: str | IPAddress, *, host: str, url: str = "") -> None:
        """Raise :class:`RefusedTarget` when ``address`` (of ``host``) may not be reached."""
        if not self.allows(address):
            where = host if str(address) == host else f"{host} ({address})"
            raise RefusedTarget(
                "address",
                f"refused address: {where} is not a public address; "
                "set allow_private_addresses or allowed_private_networks to reach it",
                url,
            )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection (module-level so tests can stub DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str | httpx.URL, settings: Settings | AddressPolicy) -> httpx.URL:
    """Check the scheme and every address the URL's host resolves to.

    :return: the parsed URL.
    :raises RefusedTarget: unsupported scheme, no host, or a refused address.
    :raises httpx.ConnectError: the host name does not resolve.
    """
    policy = settings if isinstance(settings, AddressPolicy) else AddressPolicy.from_settings(settings)
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise RefusedTarget("url", f"unsupported URL: {exc}", str(url)) from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        shown = parsed.scheme or "(none)"
        raise RefusedTarget("scheme", f"unsupported URL scheme {shown!r}: only http and https are fetched", str(url))
    host = parsed.host
    if not host:
        raise RefusedTarget("url", "unsupported URL: it has no host", str(url))
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = [str(_parse_ip(host))]
    except ValueError:
        if policy.allow_private:
            return parsed  # nothing to refuse: let the connection resolve it
        try:
            addresses = resolve_host(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpx.ConnectError(f"cannot resolve host {host!r}: {exc}") from exc
    for address in addresses:
        policy.check(address, host=host, url=str(url))
    return parsed


def peer_address(response: httpx.Response) -> str | None:
    """The IP address the response came from, when the transport exposes it."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    try:
        peer = stream.get_extra_info("server_addr")
    except Exception:  # a transport without socket details (mock transports in tests)
        return None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def check_peer(response: httpx.Response, settings: Settings | AddressPolicy) -> None:
    """Refuse a response whose connection reached a refused address (before reading its body)."""
    policy = settings if isinstance(settings, AddressPolicy) else AddressPolicy.from_settings(settings)
    address = peer_address(response)
    if address is not None:
        policy.check(address, host=response.request.url.host, url=str(response.request.url))


# --- the client ----------------------------------------------------------------------------


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, refusing connections whose peer address is not allowed.

    The check runs right after the TCP connect, so nothing is sent to a refused address
    even when DNS changed its answer since :func:`check_url` looked.
    """

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, *args, **kwargs)
        try:
            peer = stream.get_extra_info("server_addr")
            self.policy.check(str(peer[0]), host=host)
        except BaseException:
            stream.close()
            raise
        return stream


#: httpcore's errors as httpx's (the most specific match wins), as httpx's own transport maps them.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.TransportError] | None = None
        for core_error, httpx_error in _HTTPX_ERRORS.items():
            if isinstance(exc, core_error) and (mapped is None or issubclass(httpx_error, mapped)):
                mapped = httpx_error
        if mapped is None:
            raise  # ours (RefusedTarget) or a bug: as it is
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]):
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self.stream

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore connection pool that connects through
    :class:`GuardedBackend` (httpx's own transport takes no network backend), built from
    both libraries' public interfaces only."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ):
        self.pool = httpcore.ConnectionPool(
            ssl_context=verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self.pool.handle_request(core_request)
        if not isinstance(response.stream, Iterable):  # a sync pool answers with a sync stream
            raise TypeError(f"httpcore returned a {type(response.stream).__name__} stream")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.pool.close()


def http_client(settings: Settings, *, timeout_s: float | None = None) -> httpx.Client:
    """The HTTP client for registry and dataset requests.

    :param timeout_s: per-operation timeout (connect, each read, write, pool wait);
        ``settings.http_timeout_s`` by default.
    """
    return httpx.Client(
        transport=GuardedTransport(AddressPolicy.from_settings(settings)),
        timeout=httpx.Timeout(timeout_s if timeout_s is not None else settings.http_timeout_s),
        headers={"User-Agent": settings.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
        follow_redirects=False,
        # Environment proxies would hide the real peer from the address check, and .netrc
        # credentials must never be sent to publishers' servers.
        trust_env=False,
    )


@contextlib.contextmanager
def open_stream(
    client: httpx.Client,
    url: str,
    settings: Settings,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> Iterator[httpx.Response]:
    """Send a request, following redirects with every hop checked; yield the unread response.

    The body has not been read when the response is yielded (``iter_bytes``/``iter_raw``
    it); the response is closed on exit.

    :raises RefusedTarget: a hop has an unsupported scheme or a refused address.
    :raises RedirectLimitExceeded: more than ``max_redirects`` redirects.
    :raises httpx.HTTPError: connection, TLS and timeout errors from httpx.
    """
    policy = AddressPolicy.from_settings(settings)
    current = check_url(url, policy)
    if params:
        current = current.copy_merge_params(dict(params))
    for _hop in range(max_redirects + 1):
        request = client.build_request(method, current, headers=headers)
        response = client.send(request, stream=True)
        try:
            check_peer(response, policy)
            location = response.headers.get("location")
            redirect = response.status_code in REDIRECT_STATUSES and location
            if redirect:
                target = current.join(location)
        except BaseException:
            response.close()
            raise
        if not redirect:
            try:
                yield response
            finally:
                response.close()
            return
        response.close()
        if response.status_code == 303 and method != "HEAD":
            method = "GET"
        current = check_url(target, policy)
        last_status = response.status_code
    raise RedirectLimitExceeded(
        f"more than {max_redirects} redirects (last {last_status} to {current})", last_status, str(current)
    )


class UndecodableBody(Exception):
    """A compressed body (Content-Encoding or gzip file) that does not decompress."""


def inflate(chunks: Iterable[bytes], wbits: int) -> Iterator[bytes]:
    """Decompress a zlib/gzip/raw-deflate stream, yielding pieces of at most :data:`DECODE_PIECE`.

    Output is produced in bounded pieces however compressible the input, so a small
    "zip bomb" cannot make one piece huge; the caller caps the total.  Concatenated gzip
    members are all decoded.

    :raises UndecodableBody: corrupt or truncated data.
    """
    decoder = zlib.decompressobj(wbits)
    try:
        for chunk in chunks:
            data = chunk
            while data:
                out = decoder.decompress(data, DECODE_PIECE)
                if out:
                    yield out
                if decoder.eof:
                    rest = decoder.unused_data
                    if wbits & 16 and rest.lstrip(b"\0"):
                        decoder = zlib.decompressobj(wbits)  # the next gzip member
                        data = rest.lstrip(b"\0")
                        continue
                    break
                data = decoder.unconsumed_tail
        while not decoder.eof:
            out = decoder.decompress(decoder.unconsumed_tail, DECODE_PIECE)
            if not out:
                break
            yield out
    except zlib.error as exc:
        raise UndecodableBody(f"the compressed data is corrupt: {exc}") from exc
    if not decoder.eof:
        raise UndecodableBody("the compressed data is truncated")


def _deflate_wbits(first: bytes) -> int:
    # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate.
    if len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0:
        return 15
    return -15


def _peek(chunks: Iterable[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``size`` bytes of a chunk stream (fewer at its end) and the whole stream again."""
    it = iter(chunks)
    head = b""
    seen: list[bytes] = []
    for chunk in it:
        seen.append(chunk)
        head += chunk
        if len(head) >= size:
            break

    def replay() -> Iterator[bytes]:
        yield from seen
        yield from it

    return head[:size], replay()


def iter_decoded(response: httpx.Response) -> Iterator[bytes]:
    """The body with its Content-Encoding removed, in bounded pieces.

    gzip and deflate are decoded here (:func:`inflate`); other codings are left to httpx.
    """
    coding = response.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        yield from response.iter_raw()
    elif coding in ("gzip", "x-gzip"):
        yield from inflate(response.iter_raw(), 16 + zlib.MAX_WBITS)
    elif coding == "deflate":
        head, raw = _peek(response.iter_raw(), 2)
        yield from inflate(raw, _deflate_wbits(head))
    else:
        try:
            yield from response.iter_bytes()
        except httpx.DecodingError as exc:
            raise UndecodableBody(f"cannot decode Content-Encoding {coding!r}: {exc}") from exc


def ungzip_if_gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a body that is itself a gzip file (magic bytes), else pass it through."""
    head, stream = _peek(chunks, 2)
    if head == GZIP_MAGIC:
        yield from inflate(stream, 16 + zlib.MAX_WBITS)
    else:
        yield from stream


def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The (content-decoded) body of a streamed response, refusing more than ``max_bytes``."""
    parts: list[bytes] = []
    size = 0
    for chunk in iter_decoded(response):
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(f"the response is larger than {max_bytes} bytes", max_bytes)
        parts.append(chunk)
    return b"".join(parts)
