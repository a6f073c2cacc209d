"""A Microsoft Entra ID (Azure AD) token endpoint stand-in on loopback, over HTTPS, and a
self-signed certificate for it and for Azurite's HTTPS mode.

It speaks the OAuth 2.0 client-credentials protocol the way MSAL (azure-identity's engine)
uses it against an AD FS authority (tenant ``adfs``: MSAL then skips the instance discovery
that would ask ``login.microsoftonline.com``, which this machine cannot reach):

* ``GET /adfs/.well-known/openid-configuration``: the token endpoint;
* ``POST /adfs/oauth2/token`` (form: ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``, ``scope``): a JWT access token for the scope's resource, with the claims
  Azurite's OAuth mode checks (issuer, audience, lifetime).  A wrong secret is answered
  ``401 invalid_client``, an unknown client or grant ``400``, as Entra does.

Every token request is kept in :attr:`EntraStandin.token_requests` (the secret is not).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ISSUER = f"https://sts.windows.net/{TENANT}/"  # the v1 issuer Azure Storage tokens carry


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (also its own CA: point ``REQUESTS_CA_BUNDLE`` at it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class EntraStandin:
    """The token service for one app registration (``client_id`` / ``client_secret``)."""

    def __init__(self, cert: Path, key: Path, *, client_id: str, client_secret: str) -> None:
        self.client_id, self._secret = client_id, client_secret
        self.token_requests: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> EntraStandin:
        threading.Thread(target=self._server.serve_forever, name="entra-standin", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def access_token(self, resource: str) -> str:
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": ISSUER,
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
            "appid": self.client_id,
            "tid": TENANT,
            "ver": "1.0",
        }
        header = {"typ": "JWT", "alg": "RS256"}
        return ".".join(
            (_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()), _b64url(b"stand-in signature"))
        )

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_id") != self.client_id:
            return 400, {"error": "unauthorized_client", "error_description": "AADSTS700016: application not found"}
        if form.get("client_secret") != self._secret:
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: invalid client secret"}
        scope = form.get("scope", "")
        resource = scope.split()[0].removesuffix("/.default") if scope else ""
        if not resource:
            return 400, {"error": "invalid_scope"}
        return 200, {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": self.access_token(resource),
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/adfs/.well-known/openid-configuration":
                    base = f"{standin.authority_host}/adfs"
                    self._send(
                        200,
                        {
                            "issuer": base,
                            "token_endpoint": f"{base}/oauth2/token",
                            "authorization_endpoint": f"{base}/oauth2/authorize",
                            "device_authorization_endpoint": f"{base}/oauth2/devicecode",
                        },
                    )
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path.split("?")[0] != "/adfs/oauth2/token":
                    self._send(404, {"error": "not_found"})
                    return
                self._send(*standin._token(form))

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
