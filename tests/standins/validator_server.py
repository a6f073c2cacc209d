"""A stand-in for the IATI Validator API: a real HTTP server on loopback.

It speaks the documented contract (see ``refresher-facts.md`` §4.1) and validates with the
built-in XSD validator:

* ``POST /api/pvt/schema-validate-file`` → 200 ``{"valid": bool}`` (400 for an empty body);
* ``POST /api/pub/validate[?meta=true]`` → the report with 200 / 400 / 422, 413 over the size
  limit, 400 ``{"error": "No body"}`` for an empty body;
* ``GET /api/pub/version`` → plain text;
* every request needs the key header (401 otherwise, with an empty body as Azure Functions does).

Tests steer it with scripted responses (the next requests answer 500, wait, or drop the
connection) and read :attr:`ValidatorStandin.requests` to see what was posted::

    with ValidatorStandin() as validator:
        validator.fail_next(2, status=503)
        client = ValidatorClient(validator.url, key=validator.key)
        ...
        assert [r.path for r in validator.requests] == [...]
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from iati_refresher.validation.builtin import too_large_answer, validate_file

SCHEMA_PATH = "/api/pvt/schema-validate-file"
VALIDATE_PATH = "/api/pub/validate"
VERSION_PATH = "/api/pub/version"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Scripted:
    """One scripted answer, used instead of the normal one for the next request.

    :param status: the status to answer; ``None`` answers normally (after ``delay_s``).
    :param body: a JSON-able object, raw bytes, or ``None`` for an empty body.
    :param delay_s: wait this long before answering.
    :param drop: read the request, then close the connection without any answer.
    """

    status: int | None = None
    body: Any = None
    delay_s: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class LoggedRequest:
    """What the stand-in received (the key itself is not kept)."""

    method: str
    path: str
    query: dict[str, str]
    size: int
    content_type: str | None
    key_ok: bool
    client_port: int
    body_head: bytes = field(repr=False, default=b"")


class ValidatorStandin:
    """The stand-in server; a context manager that runs it in a background thread.

    :param key: the accepted key (sent in the ``key_name`` header).
    :param max_bytes: the body size above which full validation answers 413 (the API: 60 MiB).
    :param schemas_dir: where the built-in validator finds its XSDs (default: settings).
    """

    def __init__(
        self,
        *,
        key_name: str = "x-functions-key",
        key: str = "standin-key",
        max_bytes: int = 60 * MIB,
        schemas_dir: str | None = None,
    ):
        self.key_name = key_name
        self.key = key
        self.max_bytes = max_bytes
        self.schemas_dir = schemas_dir
        self._script: deque[Scripted] = deque()
        self._requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ValidatorStandin:
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="validator-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ValidatorStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- steering and inspection -------------------------------------------------------------

    def script(self, *answers: Scripted) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(answers)

    def fail_next(self, count: int, status: int = 500, body: Any = None) -> None:
        self.script(*[Scripted(status=status, body=body or {"feedback": "scripted failure", "error": "x"})] * count)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        self.script(*[Scripted(delay_s=seconds)] * count)

    def drop_next(self, count: int = 1) -> None:
        self.script(*[Scripted(drop=True)] * count)

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._requests)

    def _next_scripted(self) -> Scripted | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _log(self, request: LoggedRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout tests) makes writes fail; that is expected here."""


def _make_handler(standin: ValidatorStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if not self._key_ok():
                self._answer(401, None)
            elif parts.path == VERSION_PATH:
                self._answer(200, b"standin-builtin-xsd", content_type="text/plain")
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            with tempfile.NamedTemporaryFile(prefix="standin-body-", suffix=".xml", delete=False) as body:
                size, head = self._read_body(body)
            try:
                key_ok = self._key_ok()
                standin._log(
                    LoggedRequest(
                        "POST",
                        parts.path,
                        query,
                        size,
                        self.headers.get("Content-Type"),
                        key_ok,
                        self.client_address[1],
                        head,
                    )
                )
                scripted = standin._next_scripted()
                if scripted is not None:
                    if scripted.delay_s:
                        standin._stopping.wait(scripted.delay_s)
                    if scripted.drop:
                        self._drop()
                        return
                    if scripted.status is not None:
                        self._answer(scripted.status, scripted.body)
                        return
                self._route(parts.path, query, body.name, size, key_ok)
            finally:
                os.unlink(body.name)

        def _route(self, path: str, query: dict[str, str], body_path: str, size: int, key_ok: bool) -> None:
            if not key_ok:
                self._answer(401, None)
            elif path not in (SCHEMA_PATH, VALIDATE_PATH):
                self._answer(404, {"error": "not found"})
            elif size == 0:
                self._answer(400, {"error": "No body"})
            elif path == SCHEMA_PATH:
                status, report = validate_file(body_path, meta=False, schema_only=True, schemas_dir=standin.schemas_dir)
                self._answer(status, report)
            elif size > standin.max_bytes:
                self._answer(*too_large_answer(size, standin.max_bytes))
            else:
                meta = query.get("meta") in ("true", "True")
                status, report = validate_file(body_path, meta=meta, schemas_dir=standin.schemas_dir)
                self._answer(status, report)

        def _key_ok(self) -> bool:
            return self.headers.get(standin.key_name) == standin.key

        def _read_body(self, out: Any) -> tuple[int, bytes]:
            remaining = int(self.headers.get("Content-Length") or 0)
            size = 0
            head = b""
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 256 * 1024))
                if not chunk:
                    break
                if len(head) < 64:
                    head = (head + chunk)[:64]
                out.write(chunk)
                size += len(chunk)
                remaining -= len(chunk)
            return size, head

        def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
            if body is None:
                data = b""
            elif isinstance(body, bytes):
                data = body
            else:
                data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            if data:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
