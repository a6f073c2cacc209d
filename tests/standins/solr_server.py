"""A Solr stand-in for tests: a real HTTP server on loopback with in-memory collections.

It speaks the part of Solr the project uses — the JSON update API, ``/select`` with
``q``/``fq``/``fl``/``rows``/``start``/``sort=id asc``/``cursorMark``, ``/admin/ping`` — and it
enforces the project's own schema: it parses ``solr/configsets/<name>/conf/managed-schema.xml``
and rejects, with HTTP 400 and a Solr-like error body, documents that Solr would reject
(values that do not convert to the field type, several values in a single-valued field,
missing required fields, unknown fields without a matching dynamic field).  As in Solr, a
rejected document ends the request but the documents before it in the same request stay
added.

Differences from Solr, on purpose: updates are visible at once (no commit delay); term
matching is exact on the stored value (no text analysis); only ``id`` sorts; booleans must
be ``true``/``false``/``1``/``0`` (Solr reads anything not starting with t/T/1 as false,
which would hide flattening bugs).

It also answers the few Collections/Configsets API calls ``solr/create-collections.sh``
makes (LIST, UPLOAD, CREATE, CREATEALIAS, LISTALIASES, RELOAD): an uploaded configset's
schema is enforced by the collections created from it.

Fault injection: :meth:`SolrStandin.fail_next`, :meth:`delay_next`, :meth:`fail_mid_batch`,
:meth:`down`/:meth:`up`; :attr:`on_update` is called after every update request (before the
client gets its answer), so a test can look at the index "while indexing".
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import math
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lxml import etree

PROJECT = Path(__file__).resolve().parents[2]
CONFIGSETS = PROJECT / "solr" / "configsets"
DEFAULT_COLLECTIONS = {"activity": "activity", "transaction": "transaction", "budget": "budget"}


class SolrRequestError(Exception):
    """Answered as a Solr error body with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_DOUBLE = re.compile(r"[+-]?(NaN|Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fFdD]?)")
_DATE = re.compile(r"(-?\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?Z")
_DATE_MATH = re.compile(r"NOW((/[A-Z]+)|([+-]\d+[A-Z]+))*")
_BOOLEAN = {"true": True, "false": False, "1": True, "0": False}
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class FieldDef:
    name: str
    cls: str
    multi: bool
    required: bool = False
    default: str | None = None
    indexed: bool = True
    stored: bool = True


def _bool(raw: str | None, fallback: bool) -> bool:
    return fallback if raw is None else raw.strip().lower() == "true"


class Schema:
    """The parts of a managed-schema.xml that decide whether Solr accepts a document."""

    def __init__(self, source: Path | bytes):
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        if isinstance(source, bytes):
            root = etree.fromstring(source, parser)
        else:
            root = etree.parse(str(source), parser).getroot()
        where = "uploaded schema" if isinstance(source, bytes) else str(source)
        types: dict[str, etree._Element] = {t.get("name"): t for t in root.iter("fieldType")}
        self.unique_key = (root.findtext("uniqueKey") or "id").strip()
        self.fields: dict[str, FieldDef] = {}
        self.dynamic: list[tuple[str, FieldDef]] = []
        for node in root.iter("field", "dynamicField"):
            ftype = types.get(node.get("type"))
            if ftype is None:
                raise ValueError(f"{where}: field {node.get('name')} has unknown type {node.get('type')}")
            definition = FieldDef(
                name=node.get("name"),
                cls=ftype.get("class", "").rsplit(".", 1)[-1],
                multi=_bool(node.get("multiValued"), _bool(ftype.get("multiValued"), False)),
                required=_bool(node.get("required"), False),
                default=node.get("default"),
                indexed=_bool(node.get("indexed"), _bool(ftype.get("indexed"), True)),
                stored=_bool(node.get("stored"), _bool(ftype.get("stored"), True)),
            )
            if node.tag == "field":
                self.fields[definition.name] = definition
            else:
                self.dynamic.append((definition.name, definition))
        # Solr tries longer dynamic patterns first.
        self.dynamic.sort(key=lambda item: -len(item[0]))

    def field(self, name: str) -> FieldDef | None:
        if name in self.fields:
            return self.fields[name]
        for pattern, definition in self.dynamic:
            if (
                pattern == "*"
                or (pattern.startswith("*") and name.endswith(pattern[1:]))
                or (pattern.endswith("*") and name.startswith(pattern[:-1]))
            ):
                return definition
        return None

    def check(self, doc: Any) -> dict[str, Any]:
        """The document as it would be stored, or :class:`SolrRequestError` (400) like Solr's."""
        if not isinstance(doc, dict):
            raise SolrRequestError(400, f"Expected a JSON object for a document, got {type(doc).__name__}")
        key = doc.get(self.unique_key)
        if key in (None, "", []):
            raise SolrRequestError(400, f"Document is missing mandatory uniqueKey field: {self.unique_key}")
        label = key if isinstance(key, str) else json.dumps(key)
        stored: dict[str, Any] = {}
        for name, raw in doc.items():
            definition = self.field(name)
            if definition is None:
                raise SolrRequestError(400, f"ERROR: [doc={label}] unknown field '{name}'")
            values = raw if isinstance(raw, list) else [raw]
            values = [v for v in values if v is not None]
            if not values:
                continue
            if len(values) > 1 and not definition.multi:
                raise SolrRequestError(
                    400,
                    f"ERROR: [doc={label}] multiple values encountered for non multiValued field {name}: "
                    f"{json.dumps(values)[:200]}",
                )
            converted = [_convert(definition, name, v, label) for v in values]
            stored[name] = converted if definition.multi else converted[0]
        for definition in self.fields.values():
            if definition.name not in stored and definition.default is not None:
                value = _now() if definition.default == "NOW" else definition.default
                stored[definition.name] = [value] if definition.multi else value
        for definition in self.fields.values():
            if definition.required and definition.name not in stored:
                raise SolrRequestError(400, f"[doc={label}] missing required field: {definition.name}")
        return stored


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _convert(definition: FieldDef, name: str, value: Any, label: str) -> Any:
    def bad(reason: str) -> SolrRequestError:
        shown = json.dumps(value)[:100]
        return SolrRequestError(400, f"ERROR: [doc={label}] Error adding field '{name}'={shown} msg={reason}")

    if isinstance(value, dict | list):
        raise bad("nested values are not supported here (atomic updates and child documents are not used)")
    cls = definition.cls
    text = value if isinstance(value, str) else None
    if cls in ("IntPointField", "LongPointField"):
        low, high = INT_RANGE if cls == "IntPointField" else LONG_RANGE
        if isinstance(value, bool) or not (isinstance(value, int) or (text is not None and _INT.fullmatch(text))):
            raise bad(f'For input string: "{value}"')
        number = int(value)
        if not low <= number <= high:
            raise bad(f'For input string: "{value}" (out of range)')
        return number
    if cls in ("DoublePointField", "FloatPointField"):
        if isinstance(value, bool):
            raise bad(f'For input string: "{value}"')
        if isinstance(value, int | float):
            return float(value)
        if text is None or not _DOUBLE.fullmatch(text.strip()):
            raise bad(f'For input string: "{value}"')
        cleaned = text.strip().rstrip("fFdD")
        return float(cleaned.replace("Infinity", "inf"))
    if cls == "DatePointField":
        if text is None:
            raise bad(f"Invalid Date String:'{value}'")
        if _DATE_MATH.fullmatch(text):
            return _now()
        match = _DATE.fullmatch(text)
        if not match:
            raise bad(f"Invalid Date String:'{text}'")
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        try:
            if 1 <= year <= 9999:
                dt.datetime(year, month, day, hour, minute, second)
            elif not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
                raise ValueError("out of range")
        except ValueError as exc:
            raise bad(f"Invalid Date String:'{text}' ({exc})") from exc
        return text
    if cls == "BoolField":
        if isinstance(value, bool):
            return value
        if text is None or text.strip().lower() not in _BOOLEAN:
            raise bad(f"Invalid boolean value: '{value}' (the stand-in accepts true/false/1/0)")
        return _BOOLEAN[text.strip().lower()]
    if cls == "LatLonPointSpatialField":
        parts = text.split(",") if text is not None else []
        try:
            lat, lon = (float(p) for p in parts)
        except ValueError as exc:
            raise bad(f"Point must be in 'lat, lon' format: {value}") from exc
        if not (abs(lat) <= 90 and abs(lon) <= 180) or math.isnan(lat) or math.isnan(lon):
            raise bad(f"Invalid latitude/longitude: {value}")
        return text
    # StrField, TextField, SortableTextField: Solr stores the string form.
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------
# queries: *:*, field:"value", field:value, field:*, field:(a OR b), AND/OR/NOT/-/+, ( )
# ---------------------------------------------------------------------------------------

Matcher = Callable[[dict[str, Any]], bool]
_TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>AND\b|OR\b|NOT\b|&&|\|\|)|(?P<prefix>[-+!])"
    r'|(?P<field>(?:\\.|[^\s:()"])+):|(?P<phrase>"(?:\\.|[^"\\])*")|(?P<term>(?:\\.|[^\s()"])+))'
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _tokens(q: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    q = q.strip()
    while pos < len(q):
        match = _TOKEN.match(q, pos)
        if not match or match.end() == pos:
            raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{q}'")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(q) and q[pos].isspace():
            pos += 1
    return out


class _QueryParser:
    def __init__(self, q: str):
        self.q = q
        self.tokens = _tokens(q)
        self.pos = 0

    def parse(self) -> Matcher:
        if not self.tokens:
            return lambda doc: False
        matcher = self._or(None)
        if self.pos != len(self.tokens):
            raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{self.q}'")
        return matcher

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self, default_field: str | None) -> Matcher:
        parts = [self._and(default_field)]
        while (token := self._peek()) is not None and token[0] != "rp":
            if token[0] == "op" and token[1] in ("OR", "||"):
                self.pos += 1
            parts.append(self._and(default_field))  # juxtaposition: Solr's default q.op=OR
        return parts[0] if len(parts) == 1 else (lambda doc: any(p(doc) for p in parts))

    def _and(self, default_field: str | None) -> Matcher:
        parts = [self._unary(default_field)]
        while (token := self._peek()) is not None and token[0] == "op" and token[1] in ("AND", "&&"):
            self.pos += 1
            parts.append(self._unary(default_field))
        return parts[0] if len(parts) == 1 else (lambda doc: all(p(doc) for p in parts))

    def _unary(self, default_field: str | None) -> Matcher:
        token = self._peek()
        if token is None:
            raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{self.q}'")
        if (token[0] == "op" and token[1] == "NOT") or (token[0] == "prefix" and token[1] in "-!"):
            self.pos += 1
            inner = self._unary(default_field)
            return lambda doc: not inner(doc)
        if token[0] == "prefix":  # "+": required, same as a plain clause here
            self.pos += 1
            return self._unary(default_field)
        return self._primary(default_field)

    def _primary(self, default_field: str | None) -> Matcher:
        kind, text = self.tokens[self.pos]
        self.pos += 1
        if kind == "lp":
            inner = self._or(default_field)
            if self._peek() != ("rp", ")"):
                raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{self.q}'")
            self.pos += 1
            return inner
        if kind == "field":
            name = _unescape(text)
            nxt = self._peek()
            if nxt is not None and nxt[0] == "lp":
                return self._primary(name)
            if nxt is None or nxt[0] not in ("phrase", "term"):
                raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{self.q}'")
            self.pos += 1
            return _term_matcher(name, nxt[0], nxt[1])
        if kind in ("phrase", "term"):
            if default_field is None:
                raise SolrRequestError(400, f"stand-in: no default field for '{text}' in '{self.q}'")
            return _term_matcher(default_field, kind, text)
        raise SolrRequestError(400, f"org.apache.solr.search.SyntaxError: Cannot parse '{self.q}'")


def _term_matcher(name: str, kind: str, text: str) -> Matcher:
    if kind == "term" and text == "*":
        if name == "*":
            return lambda doc: True
        return lambda doc: name in doc
    wanted = _unescape(text[1:-1]) if kind == "phrase" else _unescape(text)

    def matches(doc: dict[str, Any]) -> bool:
        value = doc.get(name)
        values = value if isinstance(value, list) else [value]
        return any(v is not None and _as_text(v) == wanted for v in values)

    return matches


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_query(q: str) -> Matcher:
    """A predicate over stored documents for the query subset the project uses."""
    return _QueryParser(q).parse()


# ---------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------


@dataclass
class UpdateEvent:
    """What one update request did (passed to :attr:`SolrStandin.on_update`)."""

    collection: str
    added: int = 0
    deleted_ids: int = 0
    delete_queries: list[str] = field(default_factory=list)
    status: int = 200


@dataclass
class _Faults:
    fail: list[tuple[int, bool]] = field(default_factory=list)  # (status, updates only)
    delay: list[tuple[float, bool]] = field(default_factory=list)  # (seconds, still apply)
    mid_batch: tuple[int, int] | None = None  # (docs applied first, status)


class SolrStandin:
    """Run with ``with SolrStandin() as solr: ... solr.base_url``.

    :param collections: collection name → configset name under ``configsets``.
    :param aliases: alias → collection; by default ``<collection>_solrize`` for each.
    :param auth: ``(user, password)`` the server then requires as basic auth.
    """

    def __init__(
        self,
        collections: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        *,
        configsets: Path = CONFIGSETS,
        auth: tuple[str, str] | None = None,
    ):
        collections = dict(DEFAULT_COLLECTIONS if collections is None else collections)
        schemas: dict[str, Schema] = {}
        self.schemas = {
            name: schemas.setdefault(cs, Schema(configsets / cs / "conf" / "managed-schema.xml"))
            for name, cs in collections.items()
        }
        self.cores: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in collections}
        self.aliases = dict(aliases if aliases is not None else {f"{c}_solrize": c for c in collections})
        self.configsets: dict[str, Schema] = {}  # uploaded through the Configsets API
        self.admin_log: list[tuple[str, str]] = []  # (action, name) of every admin change
        self.on_update: Callable[[UpdateEvent], None] | None = None
        self.update_requests = 0
        self.requests = 0
        self._auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        self._lock = threading.RLock()
        self._faults = _Faults()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> SolrStandin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/solr"

    def start(self) -> SolrStandin:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="solr-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Kept-alive connections would otherwise go on being served by their threads.
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def down(self) -> None:
        """Stop listening (connections are refused); the data is kept for :meth:`up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, updates_only: bool = False) -> None:
        """Answer the next ``n`` requests (or update requests) with ``status``, changing nothing."""
        with self._lock:
            self._faults.fail += [(status, updates_only)] * n

    def delay_next(self, n: int = 1, seconds: float = 1.0, *, apply: bool = False) -> None:
        """Hold the next ``n`` requests for ``seconds``; with ``apply=False`` they change nothing."""
        with self._lock:
            self._faults.delay += [(seconds, apply)] * n

    def fail_mid_batch(self, after_docs: int, status: int = 500) -> None:
        """The next update request carrying documents applies ``after_docs`` of them (at most), then fails."""
        with self._lock:
            self._faults.mid_batch = (after_docs, status)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    # -- direct access for assertions ----------------------------------------------------------

    def resolve(self, name: str) -> str:
        name = self.aliases.get(name, name)
        if name not in self.cores:
            raise SolrRequestError(404, f"Could not find collection : {name}")
        return name

    def docs(self, collection: str, q: str = "*:*") -> list[dict[str, Any]]:
        """Copies of the stored documents matching ``q``, in id order."""
        matcher = parse_query(q)
        with self._lock:
            core = self.cores[self.resolve(collection)]
            return [dict(core[i]) for i in sorted(core) if matcher(core[i])]

    def ids(self, collection: str, q: str = "*:*") -> set[str]:
        return {d["id"] for d in self.docs(collection, q)}

    # -- request handling (called by the handler threads) --------------------------------------

    def _take_fault(self, is_update: bool) -> tuple[int | None, tuple[float, bool] | None]:
        with self._lock:
            self.requests += 1
            status = None
            for i, (code, updates_only) in enumerate(self._faults.fail):
                if is_update or not updates_only:
                    status = code
                    del self._faults.fail[i]
                    break
            delay = self._faults.delay.pop(0) if self._faults.delay else None
            return status, delay

    # -- the Collections and Configsets APIs (the subset solr/create-collections.sh uses) -----

    def handle_admin(self, api: str, params: dict[str, str], body: bytes) -> dict[str, Any]:
        action = params.get("action", "").upper()
        name = params.get("name", "")
        header = {"responseHeader": {"status": 0, "QTime": 0}}
        with self._lock:
            if api == "configs" and action == "LIST":
                return {**header, "configSets": sorted(self.configsets)}
            if api == "configs" and action == "UPLOAD":
                if name in self.configsets and params.get("overwrite") != "true":
                    raise SolrRequestError(400, f"The configuration {name} already exists")
                try:
                    with zipfile.ZipFile(io.BytesIO(body)) as archive:
                        schema = archive.read("managed-schema.xml")
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise SolrRequestError(400, f"not a configset zip with managed-schema.xml: {exc}") from exc
                self.configsets[name] = Schema(schema)
            elif api == "collections" and action == "LIST":
                return {**header, "collections": sorted(self.cores)}
            elif api == "collections" and action == "LISTALIASES":
                return {**header, "aliases": dict(self.aliases), "properties": {}}
            elif api == "collections" and action == "CREATE":
                configset = params.get("collection.configName", "")
                if name in self.cores:
                    raise SolrRequestError(400, f"collection already exists: {name}")
                if configset not in self.configsets:
                    raise SolrRequestError(400, f"Can not find the specified config set: {configset}")
                self.schemas[name] = self.configsets[configset]
                self.cores[name] = {}
            elif api == "collections" and action == "CREATEALIAS":
                targets = params.get("collections", "")
                if targets not in self.cores:
                    raise SolrRequestError(400, f"Can't create collection alias for collections='{targets}'")
                self.aliases[name] = targets
            elif api == "collections" and action == "RELOAD":
                self.resolve(name)
            else:
                raise SolrRequestError(400, f"stand-in: unsupported admin action {api}/{action}")
            self.admin_log.append((action, name))
        return header

    def handle_update(self, collection: str, params: dict[str, str], body: bytes) -> dict[str, Any]:
        name = self.resolve(collection)
        schema = self.schemas[name]
        try:
            payload = json.loads(body or b"{}", object_pairs_hook=lambda pairs: pairs)
        except ValueError as exc:
            raise SolrRequestError(400, f"Cannot parse provided JSON: {exc}") from exc
        event = UpdateEvent(collection=name)
        try:
            with self._lock:
                self.update_requests += 1
                commands = _commands(payload)
                mid_batch = self._faults.mid_batch if any(c == "add" for c, _ in commands) else None
                if mid_batch is not None:
                    self._faults.mid_batch = None
                core = self.cores[name]
                for command, value in commands:
                    if command == "add":
                        if mid_batch is not None and event.added >= mid_batch[0]:
                            break
                        doc = schema.check(_doc_fields(value))
                        core[str(doc[schema.unique_key])] = doc
                        event.added += 1
                    elif command == "delete_id":
                        event.deleted_ids += core.pop(str(value), None) is not None
                    elif command == "delete_query":
                        matcher = parse_query(str(value))
                        for doc_id in [i for i, d in core.items() if matcher(d)]:
                            del core[doc_id]
                        event.delete_queries.append(str(value))
                if mid_batch is not None:
                    raise SolrRequestError(mid_batch[1], "stand-in: injected failure in the middle of a batch")
        except SolrRequestError as exc:
            event.status = exc.status
            raise
        finally:
            if self.on_update is not None:
                self.on_update(event)
        return {"responseHeader": {"status": 0, "QTime": 0}}

    def handle_select(self, collection: str, params: dict[str, list[str]]) -> dict[str, Any]:
        name = self.resolve(collection)
        schema = self.schemas[name]
        first = {k: v[-1] for k, v in params.items()}
        matchers = [parse_query(first.get("q") or "*:*")] + [parse_query(fq) for fq in params.get("fq", [])]
        rows = int(first.get("rows", 10))
        start = int(first.get("start", 0))
        sort = (first.get("sort") or "id asc").strip()
        if sort not in ("id asc", "id desc"):
            raise SolrRequestError(400, f"stand-in: can only sort by id, not {sort!r}")
        cursor = first.get("cursorMark")
        with self._lock:
            core = self.cores[name]
            ordered = sorted(core, reverse=sort == "id desc")
            hits = [core[i] for i in ordered if all(m(core[i]) for m in matchers)]
            hits = [dict(h) for h in hits]
        number_found = len(hits)
        answer: dict[str, Any] = {"responseHeader": {"status": 0, "QTime": 0}}
        if cursor is not None:
            if start:
                raise SolrRequestError(400, "Cursor functionality requires start=0")
            if cursor != "*":
                last = _decode_cursor(cursor)
                hits = [h for h in hits if (h["id"] > last if sort == "id asc" else h["id"] < last)]
            page = hits[:rows]
            answer["nextCursorMark"] = _encode_cursor(page[-1]["id"]) if page else cursor
        else:
            page = hits[start : start + rows]
        fl = _field_list(first.get("fl"))
        docs = [_project(doc, fl, schema) for doc in page]
        answer["response"] = {"numFound": number_found, "start": start, "numFoundExact": True, "docs": docs}
        return answer


def _commands(payload: Any) -> list[tuple[str, Any]]:
    """The update commands of a JSON body, in order: ("add", doc) / ("delete_id", id) / ("delete_query", q)."""
    if isinstance(payload, list) and (not payload or not _is_pairs(payload)):
        # a JSON array: each element a document (object pairs)
        return [("add", doc) for doc in payload]
    if not _is_pairs(payload):
        raise SolrRequestError(400, "Expected a JSON array of documents or an object of commands")
    out: list[tuple[str, Any]] = []
    for key, value in payload:
        if key == "add":
            doc = dict(value).get("doc") if _is_pairs(value) else None
            if doc is None:
                raise SolrRequestError(400, "add command without a doc")
            out.append(("add", doc))
        elif key == "delete":
            out += _delete_commands(value)
        elif key in ("commit", "optimize", "rollback"):
            continue
        else:
            raise SolrRequestError(400, f"Unknown command '{key}'")
    return out


def _delete_commands(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, str):
        return [("delete_id", value)]
    if _is_pairs(value):
        fields = dict(value)
        if "query" in fields:
            return [("delete_query", fields["query"])]
        if "id" in fields:
            return [("delete_id", fields["id"])]
        raise SolrRequestError(400, "delete needs an id or a query")
    if isinstance(value, list):
        out: list[tuple[str, Any]] = []
        for item in value:
            out += _delete_commands(item)
        return out
    raise SolrRequestError(400, "Unsupported delete command")


def _is_pairs(value: Any) -> bool:
    """A JSON object as produced by ``object_pairs_hook=lambda p: p`` (a list of 2-tuples)."""
    return isinstance(value, list) and bool(value) and all(isinstance(p, tuple) and len(p) == 2 for p in value)


def _doc_fields(value: Any) -> Any:
    """A document's fields as Solr reads a JSON object: a key given twice is two values of
    that field (rejected later for a single-valued field such as ``id``)."""
    if not _is_pairs(value):
        return _to_dict(value)
    fields: dict[str, Any] = {}
    for key, item in value:
        item = _to_dict(item)
        if key not in fields:
            fields[key] = item
        else:
            previous = fields[key] if isinstance(fields[key], list) else [fields[key]]
            fields[key] = previous + (item if isinstance(item, list) else [item])
    return fields


def _to_dict(value: Any) -> Any:
    if _is_pairs(value):
        return {k: _to_dict(v) for k, v in value}
    if isinstance(value, list):
        return [_to_dict(v) for v in value]
    return value


def _encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(last_id).encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError as exc:
        raise SolrRequestError(400, f"Unable to parse 'cursorMark' after totem: value={cursor}") from exc


def _field_list(fl: str | None) -> list[str] | None:
    if not fl:
        return None
    names = [n for n in re.split(r"[,\s]+", fl) if n and n != "score" and ":" not in n and "[" not in n]
    return None if "*" in names else names


def _project(doc: dict[str, Any], fl: list[str] | None, schema: Schema) -> dict[str, Any]:
    if fl is None:
        return {k: v for k, v in doc.items() if (schema.field(k) or FieldDef(k, "", True)).stored}
    return {k: doc[k] for k in fl if k in doc}


class _Handler(BaseHTTPRequestHandler):
    standin: SolrStandin
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small header and body writes would wait for delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def setup(self) -> None:
        super().setup()
        with self.standin._lock:
            self.standin._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.standin._lock:
            self.standin._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        standin = self.standin
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        params = parse_qs(url.query, keep_blank_values=True)
        if (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            for key, values in parse_qs(body.decode("utf-8"), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
        action = "/".join(parts[2:]) if len(parts) >= 3 and parts[0] == "solr" else ""
        is_update = action in ("update", "update/json")
        try:
            if standin._auth and self.headers.get("Authorization") != standin._auth:
                raise SolrRequestError(401, "require authentication")
            status, delay = standin._take_fault(is_update)
            if delay is not None:
                time.sleep(delay[0])
                if not delay[1]:
                    raise SolrRequestError(503, "stand-in: delayed request dropped")
            if status is not None:
                raise SolrRequestError(status, f"stand-in: injected HTTP {status}")
            if len(parts) == 3 and parts[:2] == ["solr", "admin"]:
                answer = standin.handle_admin(parts[2], {k: v[-1] for k, v in params.items()}, body)
                self._send(200, answer)
                return
            if not action:
                raise SolrRequestError(404, f"no handler for {url.path}")
            collection = parts[1]
            if is_update:
                answer = standin.handle_update(collection, {k: v[-1] for k, v in params.items()}, body)
            elif action == "select":
                answer = standin.handle_select(collection, params)
            elif action == "admin/ping":
                standin.resolve(collection)
                answer = {"responseHeader": {"status": 0, "QTime": 0}, "status": "OK"}
            else:
                raise SolrRequestError(404, f"no handler for {url.path}")
            self._send(200, answer)
        except SolrRequestError as exc:
            self._send(
                exc.status,
                {
                    "responseHeader": {"status": exc.status, "QTime": 0},
                    "error": {
                        "metadata": ["error-class", "org.apache.solr.common.SolrException"],
                        "msg": exc.message,
                        "code": exc.status,
                    },
                },
            )
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode("utf-8")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


@contextlib.contextmanager
def running_solr(**kwargs: Any) -> Iterator[SolrStandin]:
    """``with running_solr() as solr:`` — a started stand-in, stopped afterwards."""
    standin = SolrStandin(**kwargs)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
