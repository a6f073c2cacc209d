"""A Slack incoming-webhook stand-in on loopback.

It answers like ``hooks.slack.com/services/...``: ``200 ok`` for a JSON body with ``text``,
``blocks`` or ``attachments``; ``400 invalid_payload`` for a body that is not JSON and
``400 no_text`` for one with nothing to post; ``404 no_service`` outside ``/services/``.
A test can make the next replies fail (:meth:`SlackWebhookServer.fail_next`), e.g. with
``500 rollup_error`` or ``404 no_service`` as Slack does.  Every accepted message is kept
in :attr:`SlackWebhookServer.messages`.

Usage::

    with SlackWebhookServer() as slack:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ONCALL", slack.connection_json())
        ...
        assert slack.messages[0].text.startswith(":red_circle:")
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TOKEN = "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"


@dataclass(frozen=True)
class SlackMessage:
    """One webhook POST as received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.body.get("text") or "")


class SlackWebhookServer:
    """A threaded HTTP server on ``127.0.0.1`` (a free port unless one is given)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.messages: list[SlackMessage] = []
        self.attempts = 0  # every POST, accepted or not
        self._failures: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> SlackWebhookServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="slack-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> SlackWebhookServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- what tests use ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def webhook_url(self, token: str = DEFAULT_TOKEN) -> str:
        return f"{self.url}/services/{token}"

    def connection_json(self, token: str = DEFAULT_TOKEN, *, split: bool = False) -> str:
        """An ``AIRFLOW_CONN_SLACK_ONCALL`` value for the slack provider's ``slackwebhook`` type.

        :param split: give the endpoint as ``host`` and the token as ``password`` (as the
            connection form does) instead of the whole webhook URL as ``password``.
        """
        if split:
            conn = {"conn_type": "slackwebhook", "host": f"{self.url}/services", "password": token}
        else:
            conn = {"conn_type": "slackwebhook", "password": self.webhook_url(token)}
        conn["extra"] = {"timeout": 5}
        return json.dumps(conn)

    def fail_next(self, status: int = 500, error: str = "rollup_error", times: int = 1) -> None:
        """Answer the next ``times`` POSTs with ``status`` and Slack's plain-text ``error``."""
        with self._lock:
            self._failures.extend([(status, error)] * times)

    # --- the HTTP side -------------------------------------------------------------------------

    def _next_failure(self) -> tuple[int, str] | None:
        with self._lock:
            self.attempts += 1
            return self._failures.pop(0) if self._failures else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, text: str) -> None:
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._reply(405, "invalid_method")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                failure = server._next_failure()
                if failure is not None:
                    self._reply(*failure)
                    return
                if not self.path.startswith("/services/"):
                    self._reply(404, "no_service")
                    return
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    self._reply(400, "invalid_payload")
                    return
                if not isinstance(body, dict) or not any(body.get(k) for k in ("text", "blocks", "attachments")):
                    self._reply(400, "no_text")
                    return
                with server._lock:
                    server.messages.append(SlackMessage(self.path, body, dict(self.headers.items())))
                self._reply(200, "ok")

        return Handler
