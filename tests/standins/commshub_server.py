"""An IATI Communications Hub stand-in on loopback: an HTTP function endpoint in the manner of
Azure Functions, which the Hub is.  Without the right function key (header
``x-functions-key``) every request is ``401``; with it, ``OPTIONS`` is ``204`` and a ``POST`` of
a ``NEW_BLACK_FLAG`` notice (JSON ``{"type", "data": {"publisherId", "reason"}}``) is ``200``
and kept in :attr:`CommsHubStandin.notices`; any other body is ``400``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY_HEADER = "x-functions-key"
PATH = "/api/pvt/notification"


class CommsHubStandin:
    def __init__(self, key: str) -> None:
        self._key = key
        self.methods: list[str] = []
        self.notices: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{PATH}"

    @property
    def port(self) -> int:
        return self._server.server_port

    def __enter__(self) -> CommsHubStandin:
        threading.Thread(target=self._server.serve_forever, name="commshub-standin", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _authorised(self) -> bool:
                standin.methods.append(self.command)
                if self.path.split("?")[0] != PATH:
                    self._reply(404)
                    return False
                if self.headers.get(KEY_HEADER) != standin._key:
                    self._reply(401)
                    return False
                return True

            def do_OPTIONS(self) -> None:
                if self._authorised():
                    self._reply(204)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if not self._authorised():
                    return
                try:
                    notice = json.loads(body)
                    ok = notice["type"] == "NEW_BLACK_FLAG" and notice["data"]["publisherId"]
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    standin.notices.append(notice)
                self._reply(200 if ok else 400)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
