"""Clients for the IATI Validator API, and the in-process built-in validator behind the same interface.

Both answer :class:`ValidatorResponse` ``(status, body, error)``: ``status`` is the HTTP
status (``None`` when no answer came back: timeout, refused or dropped connection), ``body``
the JSON object returned, ``error`` a one-line explanation when something was off.  How a
status is judged (keep the report, retry, give up) is the validate stage's business.

The file is streamed from disk, never read into memory.  The payload is UTF-8 without a
byte-order mark: the Validator receives the body as a string, so the reference's habit of
sending the BOM (and raw UTF-16 or Latin-1 bytes) made files fail for reasons that are not
theirs.  Files in other encodings are transcoded to a temporary UTF-8 copy whose
declaration says so.

Importable without Airflow (process-pool workers use it); the Airflow hook lives in
:mod:`iati_refresher.hooks.validator`.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from iati_refresher.connections import VALIDATOR, ConnectionInfo, ConnectionMissing, get_connection
from iati_refresher.iati.encoding import sniff_encoding, utf8_view
from iati_refresher.settings import Settings

DEFAULT_KEY_NAME = "x-functions-key"
DEFAULT_SCHEMA_PATH = "/api/pvt/schema-validate-file"
DEFAULT_VALIDATE_PATH = "/api/pub/validate"
DEFAULT_VERSION_PATH = "/api/pub/version"


class ValidatorUnavailable(RuntimeError):
    """The Validator API did not answer a request that needs no file (its version)."""


UPLOAD_CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 30.0
_UTF8_CODECS = {"utf-8", "utf-8-sig", "ascii"}


@dataclass(frozen=True)
class ValidatorResponse:
    """One answer from a validator.

    :param status: HTTP status, or ``None`` when there was no answer (timeout, connection error).
    :param body: the JSON object in the answer, if it was one.
    :param error: what went wrong, in one line (no secrets), or ``None``.
    """

    status: int | None
    body: dict[str, Any] | None
    error: str | None = None


class ValidatorClient:
    """HTTP client for the IATI Validator API (one connection pool, reused across calls).

    :param base_url: e.g. ``https://api.iatistandard.org/validator``.
    :param key_name: the header carrying the key (``x-functions-key`` for Azure Functions).
    :param key: the key itself; never shown in ``repr`` or messages.
    :param timeout_s: how long to wait for an answer (a 50 MB file takes minutes).
    :param schema_path: path of the schema-only endpoint.
    :param validate_path: path of the full validation endpoint.
    """

    def __init__(
        self,
        base_url: str,
        key_name: str = DEFAULT_KEY_NAME,
        key: str = "",
        timeout_s: float = 3600.0,
        schema_path: str = DEFAULT_SCHEMA_PATH,
        validate_path: str = DEFAULT_VALIDATE_PATH,
        version_path: str = DEFAULT_VERSION_PATH,
        *,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.key_name = key_name
        self.timeout_s = timeout_s
        self.schema_path = schema_path
        self.validate_path = validate_path
        self.version_path = version_path
        headers = {key_name: key} if key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ValidatorClient(base_url={self.base_url!r}, key_name={self.key_name!r})"

    def schema_validate(self, path: str | os.PathLike[str]) -> ValidatorResponse:
        """POST the file to the schema-only endpoint (answers ``{"valid": bool}``)."""
        return self._post(self.schema_path, path, params=None)

    def validate(self, path: str | os.PathLike[str], meta: bool) -> ValidatorResponse:
        """POST the file for full validation; ``meta=True`` asks for the per-activity list."""
        return self._post(self.validate_path, path, params={"meta": "true"} if meta else None)

    def version(self) -> str:
        """The API's version (``GET /api/pub/version``, with the key): a cheap "does it answer"."""
        try:
            response = self._client.get(self.version_path)
        except httpx.HTTPError as exc:
            raise ValidatorUnavailable(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise ValidatorUnavailable(f"{self.base_url}{self.version_path} answered HTTP {response.status_code}")
        return response.text.strip()[:100]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ValidatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, url_path: str, path: str | os.PathLike[str], params: dict[str, str] | None) -> ValidatorResponse:
        try:
            with utf8_payload(path) as (chunks, length):
                response = self._client.post(
                    url_path,
                    content=chunks,
                    params=params,
                    # An explicit length keeps httpx from chunking the upload (Azure Functions
                    # wants a Content-Length), while the body still streams from disk.
                    headers={"Content-Length": str(length), "Content-Type": "application/xml"},
                )
        except httpx.TimeoutException as exc:
            waited = f"no answer within {self.timeout_s:g} s"
            return ValidatorResponse(None, None, f"timeout: {waited} ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return ValidatorResponse(None, None, f"connection error: {type(exc).__name__}: {exc}")
        return _read_response(response)


def _read_response(response: httpx.Response) -> ValidatorResponse:
    try:
        body = response.json()
    except ValueError:
        snippet = response.text[:200].replace("\n", " ")
        return ValidatorResponse(response.status_code, None, f"HTTP {response.status_code}, not JSON: {snippet!r}")
    if not isinstance(body, dict):
        return ValidatorResponse(response.status_code, None, f"HTTP {response.status_code}, JSON is not an object")
    return ValidatorResponse(response.status_code, body, None)


@contextlib.contextmanager
def utf8_payload(path: str | os.PathLike[str]) -> Iterator[tuple[Iterator[bytes], int]]:
    """The file as UTF-8 without a byte-order mark: (chunk iterator, byte length).

    UTF-8 and ASCII files are streamed as they are, minus a BOM.  Files in another known
    encoding go through a temporary transcoded copy (declaration rewritten to UTF-8), so
    memory stays flat either way.  Undecodable files are sent unchanged for the Validator
    to judge.
    """
    info = sniff_encoding(path)
    if info.encoding is None or info.encoding in _UTF8_CODECS:
        yield from _stream(path)
        return
    with utf8_view(path, dataclasses.replace(info, needs_transcoding=True)) as view:
        yield from _stream(view)


def _stream(path: str | os.PathLike[str]) -> Iterator[tuple[Iterator[bytes], int]]:
    with open(path, "rb") as f:
        skip = len(codecs.BOM_UTF8) if f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
        length = os.fstat(f.fileno()).st_size - skip
        f.seek(skip)

        def chunks() -> Iterator[bytes]:
            while chunk := f.read(UPLOAD_CHUNK):
                yield chunk

        yield chunks(), length


class BuiltinValidatorClient:
    """The built-in XSD validator behind the :class:`ValidatorClient` interface (no HTTP)."""

    def __init__(self, schemas_dir: str | None = None, max_bytes: int = 60 * 1024 * 1024):
        self.schemas_dir = schemas_dir
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"BuiltinValidatorClient(schemas_dir={self.schemas_dir!r})"

    def schema_validate(self, path: str | os.PathLike[str]) -> ValidatorResponse:
        from iati_refresher.validation.builtin import validate_file

        status, body = validate_file(path, meta=False, schema_only=True, schemas_dir=self.schemas_dir)
        return ValidatorResponse(status, body, None)

    def validate(self, path: str | os.PathLike[str], meta: bool) -> ValidatorResponse:
        from iati_refresher.validation.builtin import too_large_answer, validate_file

        size = os.path.getsize(path)
        if size > self.max_bytes:  # the API's full validation refuses these with 413, so does this
            return ValidatorResponse(*too_large_answer(size, self.max_bytes), None)
        status, body = validate_file(path, meta=meta, schemas_dir=self.schemas_dir)
        return ValidatorResponse(status, body, None)

    def close(self) -> None:
        """Nothing to release; present for interface parity."""

    def __enter__(self) -> BuiltinValidatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_from_connection(conn: ConnectionInfo, settings: Settings) -> ValidatorClient:
    """Build a :class:`ValidatorClient` from an ``iati_validator`` connection.

    host/port/schema give the base URL; extras ``key_name`` (default ``x-functions-key``)
    and ``key`` (or the connection password) the key header; optional extras
    ``schema_path``, ``validate_path`` and ``timeout_s`` override the defaults.
    """

    def extra(name: str) -> Any:  # plain, or with the UI's ``extra__<type>__`` prefix
        return conn.extra.get(name) or conn.extra.get(f"extra__{conn.conn_type}__{name}")

    return ValidatorClient(
        conn.base_url(default_scheme="https"),
        key_name=str(extra("key_name") or DEFAULT_KEY_NAME),
        key=str(extra("key") or conn.password or ""),
        timeout_s=float(extra("timeout_s") or settings.validator_timeout_s),
        schema_path=str(extra("schema_path") or DEFAULT_SCHEMA_PATH),
        validate_path=str(extra("validate_path") or DEFAULT_VALIDATE_PATH),
    )


def validator_for(settings: Settings) -> ValidatorClient | BuiltinValidatorClient:
    """The validator this deployment uses.

    ``REFRESHER_VALIDATOR_BACKEND=builtin``: the built-in schema validator, on purpose.
    Otherwise the IATI Validator API of the ``iati_validator`` connection; without one, the
    built-in validator only in an embedded run, else :class:`ConnectionMissing`.
    """
    if settings.validator_backend == "builtin":
        return BuiltinValidatorClient(settings.schemas_dir, settings.validator_max_bytes)
    conn = get_connection(VALIDATOR)
    if conn is None or not conn.host:
        if settings.embedded:
            return BuiltinValidatorClient(settings.schemas_dir, settings.validator_max_bytes)
        raise ConnectionMissing(VALIDATOR, "the IATI Validator API; or set REFRESHER_VALIDATOR_BACKEND=builtin")
    return client_from_connection(conn, settings)
