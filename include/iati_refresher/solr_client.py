"""A small Solr client over httpx: the JSON update API, select with cursor paging, ping.

The reference used pysolr 3.9 pinned because newer versions changed how delete queries
were escaped; here query values are always escaped by :func:`quote` and the client speaks
JSON only, so there is no XML to escape at all.

Collections are named by *role* (``activity``, ``transaction``, ``budget``): the client maps
each role to its write target (``activity_solrize`` … by default, see
:func:`write_collections`).  Any other name is used as a collection name as is.

Errors are :class:`SolrError` with a ``kind``: ``server`` (5xx), ``client`` (4xx, e.g. a
document the schema rejects), ``timeout`` or ``connection``.  Server, timeout and connection
errors are worth retrying later; a client error is not.  Credentials never appear in
messages or logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote as url_quote
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from iati_refresher import __version__
from iati_refresher.connections import SOLR, ConnectionInfo, ConnectionMissing, get_connection
from iati_refresher.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("activity", "transaction", "budget")
ErrorKind = Literal["server", "client", "timeout", "connection"]
DELETE_CHUNK = 1000  # ids per delete request
PAGE_SIZE = 1000  # rows per cursor page
RETRY_STATUSES = {429, 500, 502, 503, 504}
MESSAGE_LIMIT = 500

# Characters XML 1.0 forbids: only the recovering parser lets them through (lxml 6 keeps
# ``&#1;``, the reference's lxml 4.9 dropped it), so stripping them keeps Solr's content equal.
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_CONTROL = re.compile(r"\\u00(?:0[0-8bcef]|1[0-9a-f])|\\[bf]")


class SolrError(RuntimeError):
    """A Solr request failed.

    :param kind: ``server``, ``client``, ``timeout`` or ``connection``.
    :param status: the HTTP status, when Solr answered.
    :param message: what went wrong (Solr's own error message when it gave one).
    """

    def __init__(self, kind: ErrorKind, status: int | None, message: str):
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind in ("server", "timeout", "connection")

    def __str__(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"Solr {self.kind} error{status}: {self.message}"


def quote(value: str) -> str:
    """``value`` as a quoted Lucene phrase, safe whatever characters it holds."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def field_query(field: str, value: str) -> str:
    """``field:"value"`` with the value escaped (see :func:`quote`)."""
    return f"{field}:{quote(value)}"


def clean_value(value: Any) -> Any:
    """Strip the control characters XML 1.0 forbids and replace lone surrogates.

    Lone surrogates (from ``\\ud800``-style escapes in JSON input) cannot be encoded as UTF-8;
    they become U+FFFD rather than failing the whole request.
    """
    if isinstance(value, str):
        value = value.translate(_CONTROL)
        if not value.isascii():
            value = _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    return value


class JsonDoc:
    """A Solr document already serialised as UTF-8 JSON, in parts, with its ``id`` beside it.

    The index stage builds exploded documents this way: each repeats its activity's fields,
    so the shared part is serialised once per activity and only joined into the request body
    (one copy), instead of being serialised, concatenated and encoded once per document.  The
    text must already be clean (no control characters, no lone surrogates):
    :func:`needs_cleaning` says when it is not.
    """

    __slots__ = ("id", "parts")

    def __init__(self, parts: tuple[bytes, ...], doc_id: str):
        self.parts = parts
        self.id = doc_id

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8")


_SUSPECT_ESCAPE = re.compile(r"\\u00(?:0[0-8bcef]|1[0-9a-f])|\\[bf]|\\ud[89a-f]")


def needs_cleaning(json_text: str) -> bool:
    """Whether ASCII-escaped JSON text may hold a control character or a surrogate escape
    (a pair for a character above U+FFFF counts too: the caller then takes the careful path)."""
    # substring tests first: far faster than the expression over megabytes of lake XML
    if "\\u00" not in json_text and "\\ud" not in json_text and "\\b" not in json_text and "\\f" not in json_text:
        return False
    return _SUSPECT_ESCAPE.search(json_text) is not None


def _json_body(payload: Any) -> bytes:
    """UTF-8 JSON of ``payload`` (a list of documents may hold :class:`JsonDoc` parts)."""
    if isinstance(payload, list) and any(isinstance(d, JsonDoc) for d in payload):
        parts = [b"["]
        for number, doc in enumerate(payload):
            if number:
                parts.append(b",")
            if isinstance(doc, JsonDoc):
                parts.extend(doc.parts)
            else:
                parts.append(_json_bytes(doc))
        parts.append(b"]")
        return b"".join(parts)
    return _json_bytes(payload)


def _json_bytes(payload: Any) -> bytes:
    """UTF-8 JSON of ``payload``, cleaned with :func:`clean_value` only when it needs it.

    Walking every value of every document is the expensive part of sending a batch (exploded
    documents repeat the activity's lists), so the serialised text is checked first: JSON
    writes control characters as ``\\uXXXX``, ``\\b`` or ``\\f`` escapes, and lone surrogates make
    the UTF-8 encoding fail.  A false alarm (an escaped backslash before ``b``) only costs time.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if not _ESCAPED_CONTROL.search(text):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass
    return json.dumps(clean_value(payload), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def write_collections(settings: Settings) -> dict[str, str]:
    """Role → write alias, e.g. ``{"activity": "activity_solrize", ...}``."""
    return {role: getattr(settings, f"solr_{role}_collection") + settings.solr_alias_suffix for role in ROLES}


class SolrClient:
    """Talk to one Solr (or SolrCloud) base URL such as ``http://solr:8983/solr``.

    :param base_url: Solr's base URL; user information in it is used as basic auth and
        removed from the URL.
    :param auth: ``(user, password)`` for basic auth, or ``None``.
    :param timeout_s: read timeout of every request (indexing a large batch can be slow).
    :param collections: role → collection or alias name; unknown names pass through.
    :param max_retries: retries of one request after a connection error or a 429/5xx answer
        (every request the client sends is idempotent); timeouts are not retried.
    :param retry_backoff_s: first pause between retries (doubles each time).
    :param transport: an httpx transport (tests).
    """

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 600.0,
        collections: Mapping[str, str] | None = None,
        *,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ):
        parts = urlsplit(base_url.strip())
        if parts.username is not None and auth is None:
            auth = (unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self.base_url = urlunsplit((parts.scheme or "http", netloc, parts.path.rstrip("/"), "", ""))
        self.collections = dict(collections or {})
        self.max_retries = max(0, max_retries)
        self.retry_backoff_s = retry_backoff_s
        self._http = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            headers={"User-Agent": f"iati-refresher-airflow/{__version__}"},
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"SolrClient({self.base_url!r})"

    def __enter__(self) -> SolrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def target(self, collection: str) -> str:
        """The collection or alias a role (or name) resolves to."""
        return self.collections.get(collection, collection)

    # -- requests -------------------------------------------------------------------------

    def _url(self, collection: str, path: str) -> str:
        return f"{self.base_url}/{url_quote(self.target(collection), safe='')}/{path}"

    def _request(
        self,
        method: str,
        collection: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        url = self._url(collection, path)
        where = f"{self.target(collection)}/{path}"
        headers = {"Content-Type": "application/json; charset=utf-8"} if body is not None else None
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, params=params, data=data, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise SolrError("timeout", None, f"{where}: timed out ({type(exc).__name__})") from exc
            except (httpx.TransportError, OSError) as exc:
                error = SolrError("connection", None, f"{where}: {type(exc).__name__}: {exc}"[:MESSAGE_LIMIT])
            else:
                if response.status_code < 400:
                    return _json(response, where)
                error = _http_error(response, where)
                if response.status_code not in RETRY_STATUSES:
                    raise error
            if attempt >= self.max_retries:
                raise error
            attempt += 1
            log.warning("Solr request to %s failed (%s); retry %d of %d", where, error, attempt, self.max_retries)
            time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))

    def _update(self, collection: str, payload: Any, commit_within_ms: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"wt": "json"}
        if commit_within_ms is not None:
            params["commitWithin"] = commit_within_ms
        return self._request("POST", collection, "update", params=params, body=_json_body(payload))

    # -- public API -----------------------------------------------------------------------

    def ping(self, collection: str) -> None:
        """Raise :class:`SolrError` unless the collection answers its ping handler."""
        answer = self._request("GET", collection, "admin/ping", params={"wt": "json"})
        if answer.get("status") not in (None, "OK"):
            raise SolrError("server", None, f"{self.target(collection)}: ping status {answer.get('status')!r}")

    def add(self, collection: str, docs: Iterable[Mapping[str, Any]], commit_within_ms: int | None = None) -> int:
        """Add (or overwrite, by ``id``) documents in one request; returns how many were sent.

        Control characters are stripped and lone surrogates replaced (:func:`clean_value`).
        """
        batch = [d if isinstance(d, (dict, JsonDoc)) else dict(d) for d in docs]
        if not batch:
            return 0
        params: dict[str, Any] = {"wt": "json"}
        if commit_within_ms is not None:
            params["commitWithin"] = commit_within_ms
        self._request("POST", collection, "update", params=params, body=_json_body(batch))
        return len(batch)

    def delete_ids(self, collection: str, ids: Iterable[str], commit_within_ms: int | None = None) -> int:
        """Delete documents by id (in chunks); returns how many ids were sent."""
        sent = 0
        chunk: list[str] = []
        for doc_id in ids:
            chunk.append(doc_id)
            if len(chunk) >= DELETE_CHUNK:
                self._update(collection, {"delete": chunk}, commit_within_ms)
                sent += len(chunk)
                chunk = []
        if chunk:
            self._update(collection, {"delete": chunk}, commit_within_ms)
            sent += len(chunk)
        return sent

    def delete_query(self, collection: str, q: str, commit_within_ms: int | None = None) -> None:
        """Delete every document matching ``q`` (build values with :func:`field_query`)."""
        self._update(collection, {"delete": {"query": q}}, commit_within_ms)

    def commit(self, collection: str) -> None:
        """A hard commit (the pipeline relies on autoCommit/commitWithin; tests and tools use this)."""
        self._request("POST", collection, "update", params={"wt": "json", "commit": "true"}, body=b"{}")

    def select(
        self,
        collection: str,
        q: str = "*:*",
        fl: str | Sequence[str] | None = None,
        rows: int | None = None,
        sort: str | None = None,
        cursor_mark: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Run ``/select`` (sent as a form POST, so long queries fit); returns Solr's JSON answer."""
        form: dict[str, Any] = {"q": q, "wt": "json", **params}
        if fl is not None:
            form["fl"] = fl if isinstance(fl, str) else ",".join(fl)
        if rows is not None:
            form["rows"] = rows
        if sort is not None:
            form["sort"] = sort
        if cursor_mark is not None:
            form["cursorMark"] = cursor_mark
        return self._request("POST", collection, "select", data=form)

    def iter_docs(
        self, collection: str, q: str = "*:*", fl: str | Sequence[str] = "id", page_size: int = PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """Every matching document, paged with ``cursorMark`` in ``id`` order."""
        cursor = "*"
        while True:
            answer = self.select(collection, q, fl=fl, rows=page_size, sort="id asc", cursor_mark=cursor)
            yield from answer.get("response", {}).get("docs", [])
            next_cursor = answer.get("nextCursorMark")
            if not next_cursor or next_cursor == cursor:
                return
            cursor = next_cursor

    def iter_ids(self, collection: str, q: str = "*:*", page_size: int = PAGE_SIZE) -> Iterator[str]:
        """The ``id`` of every matching document (cursor paging, ``sort=id asc``)."""
        for doc in self.iter_docs(collection, q, fl="id", page_size=page_size):
            yield doc["id"]

    def count(self, collection: str, q: str = "*:*") -> int:
        answer = self.select(collection, q, rows=0)
        return int(answer.get("response", {}).get("numFound", 0))


def _json(response: httpx.Response, where: str) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError as exc:
        raise SolrError("server", response.status_code, f"{where}: the answer is not JSON") from exc
    return answer if isinstance(answer, dict) else {}


def _http_error(response: httpx.Response, where: str) -> SolrError:
    status = response.status_code
    message = ""
    try:
        answer = response.json()
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            message = str(error.get("msg") or error.get("trace") or "")
    except ValueError:
        message = response.text.strip()
    if not message:
        message = response.reason_phrase or "no message"
    kind: ErrorKind = "server" if status >= 500 or status == 429 else "client"
    return SolrError(kind, status, f"{where}: {message}"[:MESSAGE_LIMIT])


def client_from_connection(info: ConnectionInfo, settings: Settings) -> SolrClient:
    """Build the client for an Airflow-style connection (host may carry a scheme and path)."""
    auth = (info.login, info.password) if info.login else None
    return SolrClient(
        info.base_url(),
        auth=auth,
        timeout_s=settings.solr_timeout_s,
        collections=write_collections(settings),
        max_retries=settings.solr_max_retries,
    )


def solr_for(settings: Settings, *, use_airflow: bool = True) -> SolrClient | None:
    """The Solr client for the ``solr`` connection; ``None`` (indexing skipped) only in an
    embedded run without one, else :class:`ConnectionMissing`.  Close it after use."""
    info = get_connection(SOLR, use_airflow=use_airflow)
    if info is None or not info.host:
        if settings.embedded:
            return None
        raise ConnectionMissing(SOLR, "the Solr the datastore is indexed into")
    return client_from_connection(info, settings)


@contextlib.contextmanager
def open_solr(settings: Settings) -> Iterator[SolrClient | None]:
    """:func:`solr_for`, closed afterwards."""
    client = solr_for(settings)
    try:
        yield client
    finally:
        if client is not None:
            client.close()
