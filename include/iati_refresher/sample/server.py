"""A small IATI Bulk Data Service on loopback, serving the sample datasets in ``data/``.

``make run`` points the refresher at it so the whole pipeline works offline::

    python -m iati_refresher.sample.server [--host 127.0.0.1] [--port 0] [--print-url]

It serves what the refresher reads from the real Bulk Data Service:

* ``/datasets-minimal`` and ``/reporting-orgs``: the two indices, from the same "run"
  (one ``index_created_unix_timestamp``), with strong ETags; ``GET``/``HEAD`` with a
  matching ``If-None-Match`` answer ``304``;
* ``/iati-xml-files/<file>``: the datasets' cached copies (ETag and Last-Modified too).

Hashes are computed at start-up with the Bulk Data Service rule: SHA-1 of the file's text
as UTF-8 after removing every ``generated-datetime="..."`` attribute.

:class:`SampleRegistryServer` can also be used in-process (``start()``/``stop()``/``url``);
its request handling (:meth:`SampleRegistryServer.handle` returning a :class:`Reply`) is
the machinery the tests' registry stand-in builds on.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from iati_refresher.iati.encoding import sniff_encoding

DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST = "registry.json"
FILES_PREFIX = "/iati-xml-files/"
DATASET_INDEX_PATH = "/datasets-minimal"
REPORTING_ORG_INDEX_PATH = "/reporting-orgs"

_GENERATED_DATETIME = re.compile(r'generated-datetime="[^"]*"')


def hash_excluding_generated_timestamp(data: bytes, encoding: str | None = "utf-8") -> str:
    """The Bulk Data Service's content hash: SHA-1 of the UTF-8 text without ``generated-datetime="..."``.

    :param encoding: how to read ``data`` as text (``None`` or undecodable: Latin-1, which
        reads any bytes).
    """
    try:
        text = data.decode(encoding or "latin-1")
    except (UnicodeDecodeError, LookupError):
        text = data.decode("latin-1")
    return hashlib.sha1(_GENERATED_DATETIME.sub("", text).encode("utf-8")).hexdigest()


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.sha1(body).hexdigest() + '"'


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


# --- request / reply machinery -----------------------------------------------------------------


@dataclass
class Reply:
    """An HTTP answer.

    :param status: HTTP status.
    :param body: the whole body, or an iterable of byte chunks and pauses (a ``float`` item
        sleeps that many seconds, so tests can stall or slow a response mid-body).  An
        iterable body is sent without Content-Length (unless ``headers`` set one) and the
        connection is closed after it.
    :param headers: response headers.
    :param etag: a strong ETag; a matching ``If-None-Match`` turns the reply into ``304``.
    :param last_modified: Unix time for ``Last-Modified``/``If-Modified-Since``.
    """

    status: int = 200
    body: bytes | Iterable[bytes | float] = b""
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: float | None = None

    @classmethod
    def of_json(cls, payload: Any, status: int = 200, *, etag: bool = True) -> Reply:
        body = json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8")
        return cls(status, body, {"Content-Type": "application/json"}, etag=strong_etag(body) if etag else None)

    @classmethod
    def text(cls, status: int, message: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
        return cls(status, message.encode("utf-8"), {"Content-Type": content_type})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived
    client: str
    client_port: int  # the same port for two requests means a reused connection

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    app: SampleRegistryServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, refused peers) are routine here, not server errors.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces access logging

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _serve(self, method: str) -> None:
        app = self.server.app
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=method,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            at=time.monotonic(),
            client=self.client_address[0],
            client_port=self.client_address[1],
        )
        app.record(request)
        try:
            reply = app.handle(request)
        except Exception as exc:  # a bug in a handler: answer 500 rather than hang the client
            reply = Reply.text(500, f"server error: {type(exc).__name__}: {exc}")
        self._send(method, request, reply)

    def _not_modified(self, request: RecordedRequest, reply: Reply) -> bool:
        if reply.status != 200:
            return False
        inm = request.headers.get("if-none-match")
        if inm is not None and reply.etag:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or reply.etag in tags
        ims = request.headers.get("if-modified-since")
        if ims and reply.last_modified is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims)
            except (TypeError, ValueError):
                return False
            return int(reply.last_modified) <= since.timestamp()
        return False

    def _send(self, method: str, request: RecordedRequest, reply: Reply) -> None:
        app = self.server.app
        headers = dict(reply.headers)
        if reply.etag:
            headers.setdefault("ETag", reply.etag)
        if reply.last_modified is not None:
            headers.setdefault("Last-Modified", http_date(reply.last_modified))
        if self._not_modified(request, reply):
            self.send_response(304)
            for name in ("ETag", "Last-Modified"):
                if name in headers:
                    self.send_header(name, headers[name])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        streamed = not isinstance(reply.body, bytes)
        if not streamed:
            headers.setdefault("Content-Length", str(len(reply.body)))  # type: ignore[arg-type]
        if streamed and "Content-Length" not in headers:
            headers["Connection"] = "close"
            self.close_connection = True
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method == "HEAD":
            return
        try:
            if isinstance(reply.body, bytes):
                self.wfile.write(reply.body)
                return
            for item in reply.body:
                if isinstance(item, bytes):
                    self.wfile.write(item)
                    continue
                self.wfile.flush()  # a pause: what came before it must be on the wire
                if app.pause(float(item)):
                    self.close_connection = True
                    return
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class SampleRegistryServer:
    """The sample Bulk Data Service (see the module docstring).

    :param host: address to bind (``127.0.0.1``).
    :param port: port to bind (``0``: any free port).
    :param data_dir: directory holding ``registry.json`` and the XML files (the packaged
        sample by default; ``None`` with ``load_sample=False`` serves nothing).
    :param public_url: base URL written into the cached dataset URLs (default: the bound
        address), for a server reached through another name.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        data_dir: str | Path | None = None,
        public_url: str | None = None,
        load_sample: bool = True,
    ):
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
        self._load_sample = load_sample
        self._public_url = public_url.rstrip("/") if public_url else None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.started_at = time.time()
        self.files: dict[str, Reply] = {}
        self.dataset_index: dict[str, Any] = {}
        self.reporting_org_index: dict[str, Any] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base URL (no trailing slash)."""
        if self._public_url:
            return self._public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SampleRegistryServer:
        """Bind, build the indices and serve in a background thread."""
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.app = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._stopping.clear()
        self.started_at = time.time()
        if self._load_sample:
            self.load(self.data_dir)
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"registry-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; pending pauses in responses end at once."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SampleRegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self, seconds: float) -> bool:
        """Sleep inside a response; True when the server is stopping (the response is abandoned)."""
        return self._stopping.wait(seconds)

    # --- the request log -----------------------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- content -----------------------------------------------------------------------------------

    def load(self, data_dir: Path) -> None:
        """Build the indices and file routes from ``data_dir/registry.json``."""
        manifest = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
        created = int(self.started_at)
        stamp = datetime.fromtimestamp(created, UTC).isoformat(sep=" ")
        org_ids = {p["short_name"]: p["id"] for p in manifest["publishers"]}
        datasets = []
        for entry in manifest["datasets"]:
            good: dict[str, Any] = dict.fromkeys(
                (
                    "downloaded",
                    "verified_on_server",
                    "hash",
                    "hash_excluding_generated_timestamp",
                    "cached_dataset_url_xml",
                    "cached_dataset_url_zip",
                    "cached_dataset_xml_url",
                    "cached_dataset_zip_url",
                ),
            )
            if entry.get("file"):
                path = data_dir / entry["file"]
                data = path.read_bytes()
                info = sniff_encoding(path)
                cached_url = f"{self.url}{FILES_PREFIX}{entry['file']}"
                good.update(
                    downloaded=stamp,
                    verified_on_server=stamp,
                    hash=hashlib.sha1(data).hexdigest(),
                    hash_excluding_generated_timestamp=hash_excluding_generated_timestamp(data, info.encoding),
                    cached_dataset_url_xml=cached_url,
                    cached_dataset_xml_url=cached_url,
                )
                self.add_file(FILES_PREFIX + entry["file"], data, last_modified=self.started_at)
            datasets.append(
                {
                    "id": entry["id"],
                    "short_name": entry["short_name"],
                    "reporting_org_id": org_ids[entry["publisher"]],
                    "reporting_org_short_name": entry["publisher"],
                    "source_url": f"https://{entry['publisher']}.example.org/iati/{entry['short_name']}.xml",
                    "license_id": "cc-by",
                    "last_update_check": stamp,
                    "last_known_good_dataset": good,
                }
            )
        orgs = [
            {
                key: p.get(key)
                for key in ("id", "short_name", "human_readable_name", "iati_identifier", "description", "hq_country")
            }
            for p in manifest["publishers"]
        ]
        self.dataset_index = {"index_created": stamp, "index_created_unix_timestamp": created, "datasets": datasets}
        self.reporting_org_index = {
            "index_created": stamp,
            "index_created_unix_timestamp": created,
            "reporting_orgs": orgs,
        }

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str = "application/xml",
        headers: dict[str, str] | None = None,
        last_modified: float | None = None,
    ) -> str:
        """Serve ``data`` at ``path`` (with a strong ETag); returns its full URL."""
        self.files[path] = Reply(
            200,
            data,
            {"Content-Type": content_type, **(headers or {})},
            etag=strong_etag(data),
            last_modified=last_modified,
        )
        return self.url + path

    # --- routing ---------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        """Answer one request (subclasses add routes and fall back to this)."""
        if request.path == DATASET_INDEX_PATH and self.dataset_index:
            return Reply.of_json(self.dataset_index)
        if request.path == REPORTING_ORG_INDEX_PATH and self.reporting_org_index:
            return Reply.of_json(self.reporting_org_index)
        if request.path in self.files:
            return self.files[request.path]
        return Reply.text(404, "not found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the sample IATI registry (Bulk Data Service API) locally.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port)")
    parser.add_argument("--print-url", action="store_true", help="print the base URL on one line once serving")
    parser.add_argument("--public-url", default=None, help="base URL to put in the cached dataset URLs")
    args = parser.parse_args(argv)

    server = SampleRegistryServer(args.host, args.port, public_url=args.public_url).start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    if args.print_url:
        print(server.url, flush=True)
    else:
        count = len(server.dataset_index.get("datasets", []))
        print(f"sample registry with {count} datasets at {server.url}{DATASET_INDEX_PATH}", flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
