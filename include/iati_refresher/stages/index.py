"""Index stage: flattened activities + the activity lake → Solr, with no gap in search.

A document's Solr documents live in three collections (written through the ``*_solrize``
aliases): one *activity* document per activity, and one *transaction* / *budget* document
per ``<transaction>`` / ``<budget>`` of an activity ("explode").

The reference deleted a dataset's documents and then re-added them one activity per
request, so a republished dataset vanished from search for the whole run, and any Solr
error deleted it completely.  Here (:func:`index_document`):

1. the ids the dataset currently has in each collection are read (cursor paging);
2. the new version is streamed from its flat JSON-lines blob and added in batches of at
   most ``solr_batch_size`` documents per request (``iati_xml``/``iati_json`` are rebuilt
   from the clean file in step, one blob read instead of two per activity; the stored lake
   blobs are read when the two disagree).  Activity ids
   (``{document_id}--{sha1(identifier)}--{n}``) are the same in every version, so an
   unchanged or updated activity is overwritten in place and never disappears;
3. only then are the old ids the new version did not write deleted.

If anything fails while adding, the previous version stays searchable: only ids this
attempt added that were not there before are deleted again (best effort), and the outcome
is ``failed``.  Memory is bounded by one batch and the set of old ids.

The price: exploded ids include the document hash, so while a changed dataset is being
reindexed its transactions and budgets briefly show twice (old and new) instead of not at
all.  Anything left behind by a crash is found by :func:`reconcile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

import msgspec

from iati_refresher.iati.accelerated import compiled
from iati_refresher.iati.identifiers import lake_name, normalise_identifier, solr_activity_id
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.solr_client import ROLES, JsonDoc, SolrClient, SolrError, field_query, needs_cleaning, quote
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore

log = logging.getLogger(__name__)

EXPLODE_ELEMENTS = ("transaction", "budget")
DOCUMENT_ID_FIELD = "iati_activities_document_id"
DOCUMENT_HASH_FIELD = "iati_activities_document_hash"
LAKE_FIELDS = ("iati_xml", "iati_json")
#: A batch is also sent early once its documents reach roughly this many characters of JSON,
#: so very large activities (or transactions that repeat a large activity) never build one
#: huge request.  Each collection buffers its own batch and a request body exists twice
#: (text, then UTF-8), so this bounds the worker's memory: 4 MB keeps a 40 MB file's index
#: worker near 100 MB of RSS where 32 MB took it past 200 MB (BENCHMARKS.md), at no cost in speed.
MAX_BATCH_CHARS = 4 * 1024 * 1024
ROLLBACK_CHUNK = 1000


# ---------------------------------------------------------------------------------------
# building Solr documents (pure)
# ---------------------------------------------------------------------------------------


def _jsonb_key(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return len(raw), raw


# Activities of one file share a few hundred key sets: their orders are computed once.
_JSONB_ORDERS: dict[tuple[str, ...], list[str]] = {}
_JSONB_ORDERS_MAX = 50_000
# (activity keys, element) → the keys an exploded document keeps, likewise
# (kept smaller than the orders: two entries per key set, and a worker's memory is bounded)
_BASE_KEYS: dict[tuple[tuple[str, ...], str], tuple[list[str], frozenset[str]]] = {}
_BASE_KEYS_MAX = 5_000


def _python_jsonb_order(value: Any) -> Any:
    """``value`` with every dict's keys in PostgreSQL ``jsonb`` order (recursively).

    jsonb stores object keys sorted by length in bytes, then bytewise.  The reference kept
    flattened activities in a jsonb column and built exploded documents from what it read
    back, so that order is part of how it computed transaction and budget ids.
    """
    if isinstance(value, dict):
        keys = tuple(value)
        order = _JSONB_ORDERS.get(keys)
        if order is None:
            order = sorted(keys, key=_jsonb_key)
            if len(_JSONB_ORDERS) < _JSONB_ORDERS_MAX:
                _JSONB_ORDERS[keys] = order
        return {k: v if type(v) is str else _python_jsonb_order(v) for k in order for v in (value[k],)}
    if isinstance(value, list):
        return [v if type(v) is str else _python_jsonb_order(v) for v in value]
    return value


#: ``value`` in jsonb key order: the compiled function when built (same result, tests/unit/test_compiled.py)
jsonb_order: Callable[[Any], Any] = compiled.jsonb_order if compiled is not None else _python_jsonb_order
#: the compiled JSON writers when built (``None``: json writes every document, see _exploded)
json_members: Callable[[dict[str, Any]], tuple[dict[str, bytes], list[str]] | None] | None = (
    compiled.json_members if compiled is not None else None
)
json_text: Callable[[Any], tuple[bytes, bool] | None] | None = compiled.json_text if compiled is not None else None


def location_latlon(pos: str) -> str | None:
    """``"lat lon"`` (``location/point/pos``) → ``"lat,lon"`` for Solr, or ``None`` when invalid.

    Two whitespace-separated floats with ``|lat| <= 90`` and ``|lon| <= 180``, written with
    Python's float repr as the reference did (``"1 1"`` → ``"1.0,1.0"``).
    """
    if not isinstance(pos, str):
        return None
    parts = pos.split()
    if len(parts) != 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (abs(lat) <= 90 and abs(lon) <= 180):  # also false for NaN
        return None
    return f"{lat!r},{lon!r}"


def location_point_latlon(pos: Any) -> list[str] | None:
    """The ``location_point_latlon`` values for a ``location_point_pos`` value, or ``None``.

    Always a list, even for one point: the exploded ids hash the document's JSON, and the
    reference wrote a list whatever the shape of ``location_point_pos``.
    """
    points = pos if isinstance(pos, list) else [pos] if isinstance(pos, str) else []
    valid = [v for v in (location_latlon(p) for p in points) if v is not None]
    return valid or None


def activity_identifier(activity: Mapping[str, Any]) -> str:
    """The activity's identifier: the first ``iati_identifier`` value, normalised ('' if none).

    An activity with two ``iati-identifier`` elements flattens to a list; the reference
    crashed the whole document on it.  The first one wins here, as it does for the lake
    blob names (:func:`iati_refresher.iati.identifiers.identifier_of`).
    """
    value = activity.get("iati_identifier")
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), "")
    return normalise_identifier(value) if isinstance(value, str) else ""


def drop_empty(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Remove top-level fields whose value is exactly ``""`` (``""`` inside lists stays)."""
    return {k: v for k, v in doc.items() if v != ""}


def explode(activity_doc: Mapping[str, Any], element: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One document per ``element`` item, ids exactly as the reference computed them.

    Each document is the activity document without its ``iati_xml``/``iati_json`` and
    without every field starting with ``<element>_`` (the activity-wide lists), followed by
    the item's own fields.  Its ``id`` is the SHA-1 hex of ``json.dumps(doc)`` (default
    separators, ASCII escapes) followed by the item's decimal index, computed while ``doc``
    still holds the activity's ``id`` — the index keeps identical items apart.  Key order
    matters to that hash: it is the order of ``activity_doc`` then of the item, so callers
    pass both in the reference's order (see :func:`activity_documents`).
    """
    return [doc for doc, _text in _exploded(activity_doc, element, items)]


def _base_keys(keys: tuple[str, ...], element: str) -> tuple[list[str], frozenset[str]]:
    """The keys of an activity document that its ``element`` documents keep (and as a set)."""
    kept = _BASE_KEYS.get((keys, element))
    if kept is None:
        prefix = f"{element}_"
        names = [k for k in keys if not k.startswith(prefix) and k not in LAKE_FIELDS]
        kept = names, frozenset(names)
        if len(_BASE_KEYS) < _BASE_KEYS_MAX:
            _BASE_KEYS[(keys, element)] = kept
    return kept


def _exploded(
    activity_doc: Mapping[str, Any], element: str, items: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(document, its JSON text to send, or None) per item, ids set.

    The text is the one the id hashes, without the activity's ``id`` member and with the
    document's own ``id`` last (Solr reads a key given twice as two values).  It is given only
    when the document can be sent as it is: no top-level ``""`` to drop and nothing to clean
    (:func:`~iati_refresher.solr_client.needs_cleaning`, checked on the shared part once).
    """
    kept, _ = _base_keys(tuple(activity_doc), element)
    base = {k: activity_doc[k] for k in kept}
    # The base is most of every document's text: serialise and hash it once.  ``json.dumps``
    # of ``{**base, **item}`` is the base's members, ", ", then the item's, as long as no key
    # is in both; otherwise the whole document is serialised as the reference did.
    base_members = json.dumps(base)[1:-1]
    base_hash = hashlib.sha1(("{" + base_members + ", ").encode("utf-8"))
    # the activity's id is the base's last member (see activity_documents)
    id_member = f'"id": {json.dumps(base["id"])}' if isinstance(base.get("id"), str) else None
    sendable = id_member is not None and base_members.endswith(id_member) and next(reversed(base)) == "id"
    body_base = base_members[: -len(id_member)] if sendable and id_member else ""
    # (an escape sequence never spans the shared part and the item's: the first ends between members)
    sendable = sendable and "" not in base.values() and not needs_cleaning(body_base)
    for index, item in enumerate(items):
        doc = {**base, **item}
        if item and base and base.keys().isdisjoint(item):
            item_text = json.dumps(item)[1:]
            digest = base_hash.copy()
            digest.update((item_text + str(index)).encode("utf-8"))
            doc["id"] = digest.hexdigest()
            if sendable and "" not in item.values() and not needs_cleaning(item_text):
                yield doc, "{" + body_base + item_text[:-1] + f', "id": "{doc["id"]}"}}'
            else:
                yield doc, None
        else:
            doc["id"] = hashlib.sha1((json.dumps(doc) + str(index)).encode("utf-8")).hexdigest()
            yield doc, None


class LakeLiteral(str):
    """A lake text given as its JSON string literal (as the lake bundle stores it).

    ``suspect``: whether it needs cleaning before it goes to Solr, when the bundle says so
    (``None``: not known, check the text)."""

    suspect: bool | None = None

    @classmethod
    def of(cls, literal: str, suspect: bool | None) -> LakeLiteral:
        value = cls(literal)
        value.suspect = suspect
        return value

    def needs_cleaning(self) -> bool:
        return needs_cleaning(self) if self.suspect is None else self.suspect

    def text(self) -> str:
        return str(json.loads(self))


class ActivityDocuments(NamedTuple):
    """The Solr documents built from one flattened activity (dicts, or :class:`JsonDoc` texts)."""

    activity: Any
    transaction: list[Any]
    budget: list[Any]
    #: roughly how many characters of JSON the activity's fields take (every exploded
    #: document repeats most of them): used to keep requests to a reasonable size
    base_chars: int = 0
    #: characters of the activity's iati_xml and iati_json
    lake_chars: int = 0

    def by_role(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "activity", self.activity
        for doc in self.transaction:
            yield "transaction", doc
        for doc in self.budget:
            yield "budget", doc

    def sized(self) -> Iterator[tuple[str, dict[str, Any], int]]:
        """(role, document, approximate JSON size) for every document."""
        for role, doc in self.by_role():
            yield role, doc, self.base_chars + (self.lake_chars if role == "activity" else 0)


def activity_documents(
    activity: Mapping[str, Any],
    *,
    document_id: str,
    document_hash: str,
    occurrence: int,
    iati_xml: str | None = None,
    iati_json: str | None = None,
    serialised: bool = False,
) -> ActivityDocuments:
    """The activity, transaction and budget documents of one flattened activity.

    The steps follow the reference, in its order, because the exploded ids hash the
    document's JSON text and so depend on its key order:

    * keys in jsonb order (the reference read activities back from a jsonb column);
    * ``iati_identifier`` reduced to the first identifier (see :func:`activity_identifier`);
    * ``iati_activities_document_id``, ``iati_activities_document_hash``, then
      ``location_point_latlon`` (when any ``location_point_pos`` is valid) and ``id``
      appended in that order; ``@transaction`` / ``@budget`` taken out;
    * the exploded ids are computed on that document (``""`` values included); top-level
      ``""`` values are dropped from every document only afterwards, "at add time".

    :param occurrence: how many earlier activities of the same document had this identifier.
    :param iati_xml: the lake XML (``None`` leaves the field out, e.g. to compute ids only).
    :param iati_json: the lake JSON.
    :param serialised: give transaction and budget documents as :class:`JsonDoc` texts (the
        same documents, serialised once per activity instead of once each) where that is safe.
    """
    doc: dict[str, Any] = jsonb_order(activity)
    identifier = activity_identifier(activity)
    doc["iati_identifier"] = identifier
    items = {element: doc.pop(f"@{element}", None) or [] for element in EXPLODE_ELEMENTS}
    doc[DOCUMENT_ID_FIELD] = document_id
    doc[DOCUMENT_HASH_FIELD] = document_hash
    if "location_point_pos" in doc:
        latlon = location_point_latlon(doc["location_point_pos"])
        if latlon is not None:
            doc["location_point_latlon"] = latlon
    doc["id"] = solr_activity_id(document_id, identifier, occurrence)
    members = json_members(doc) if serialised and json_members is not None else None
    if members is not None:
        return _serialised_documents(doc, items, members[0], frozenset(members[1]), iati_xml, iati_json)
    exploded = {
        element: [
            _payload(d, text, serialised)
            for d, text in _exploded(doc, element, [i for i in items[element] if isinstance(i, dict)])
        ]
        for element in EXPLODE_ELEMENTS
    }
    activity_doc = drop_empty(doc)
    text = json.dumps(activity_doc)
    lake_chars = len(iati_xml or "") + len(iati_json or "")
    literals = [v for v in (iati_xml, iati_json) if isinstance(v, LakeLiteral)]
    if (
        serialised
        and len(literals) == 2
        and not needs_cleaning(text)
        and not any(literal.needs_cleaning() for literal in literals)
    ):
        # the lake texts go into the request as the bundle stored them, never decoded
        spliced = f'{text[:-1]}, "iati_xml": {iati_xml}, "iati_json": {iati_json}}}'
        return ActivityDocuments(
            JsonDoc((spliced.encode("ascii"),), activity_doc["id"]),
            exploded["transaction"],
            exploded["budget"],
            len(text),
            lake_chars,
        )
    _add_lake(activity_doc, iati_xml, iati_json)
    return ActivityDocuments(activity_doc, exploded["transaction"], exploded["budget"], len(text), lake_chars)


def _payload(doc: dict[str, Any], text: str | None, serialised: bool) -> Any:
    """The document to send: its JSON text when nothing is to be dropped or cleaned (the
    reference dropped top-level ``""`` values after hashing), else the dict."""
    if serialised and text is not None:
        return JsonDoc((text.encode("ascii"),), doc["id"])
    return drop_empty(doc)


def _add_lake(activity_doc: dict[str, Any], iati_xml: str | None, iati_json: str | None) -> None:
    """Set the lake texts that are given (a bundle literal is decoded)."""
    for name, value in (("iati_xml", iati_xml), ("iati_json", iati_json)):
        if value is not None:
            activity_doc[name] = value.text() if isinstance(value, LakeLiteral) else value


def _serialised_documents(
    doc: dict[str, Any],
    items: Mapping[str, list[Any]],
    members: Mapping[str, bytes],
    suspect: frozenset[str],
    iati_xml: str | None,
    iati_json: str | None,
) -> ActivityDocuments:
    """:func:`activity_documents` from the activity's members serialised once (``members``:
    key → ``b'"key": value'`` exactly as ``json.dumps`` writes it; ``suspect``: the keys
    whose member needs cleaning).  The activity and each base are joined from them."""
    keys = tuple(doc)
    empty = frozenset(k for k, v in doc.items() if v == "")
    exploded = {
        element: list(
            _exploded_parts(
                doc, keys, element, [i for i in items[element] if isinstance(i, dict)], members, suspect, empty
            )
        )
        for element in EXPLODE_ELEMENTS
    }
    kept = [k for k in keys if k not in empty] if empty else keys
    text = b", ".join([members[k] for k in kept])
    lake_chars = len(iati_xml or "") + len(iati_json or "")
    if (
        isinstance(iati_xml, LakeLiteral)
        and isinstance(iati_json, LakeLiteral)
        and suspect.isdisjoint(kept)
        and not iati_xml.needs_cleaning()
        and not iati_json.needs_cleaning()
    ):
        # the lake texts go into the request as the bundle stored them, never decoded
        parts = (
            b"{",
            text,
            b', "iati_xml": ',
            iati_xml.encode("ascii"),
            b', "iati_json": ',
            iati_json.encode("ascii"),
            b"}",
        )
        return ActivityDocuments(
            JsonDoc(parts, doc["id"]), exploded["transaction"], exploded["budget"], len(text) + 2, lake_chars
        )
    activity_doc = drop_empty(doc)
    _add_lake(activity_doc, iati_xml, iati_json)
    return ActivityDocuments(activity_doc, exploded["transaction"], exploded["budget"], len(text) + 2, lake_chars)


def _exploded_parts(
    doc: dict[str, Any],
    keys: tuple[str, ...],
    element: str,
    items: Sequence[Mapping[str, Any]],
    members: Mapping[str, bytes],
    suspect: frozenset[str],
    empty: frozenset[str],
) -> Iterator[Any]:
    """:func:`_exploded`'s documents (the same ids), ready to send: :class:`JsonDoc` parts
    sharing the base's bytes where nothing is to be dropped or cleaned, else dicts."""
    kept, kept_set = _base_keys(keys, element)
    base_members = b", ".join([members[k] for k in kept])
    base_hash = hashlib.sha1(b"{" + base_members + b", ")
    # the activity's id is the base's last member (see activity_documents)
    sendable = bool(kept) and kept[-1] == "id" and type(doc["id"]) is str
    sendable = sendable and suspect.isdisjoint(kept) and empty.isdisjoint(kept)
    opening = b"{" + base_members[: len(base_members) - len(members["id"])] if sendable else b""
    for index, item in enumerate(items):
        encoded = json_text(item) if item and kept and kept_set.isdisjoint(item) and json_text is not None else None
        if encoded is None:
            whole = {**{k: doc[k] for k in kept}, **item}
            whole["id"] = hashlib.sha1((json.dumps(whole) + str(index)).encode("utf-8")).hexdigest()
            yield drop_empty(whole)
            continue
        item_text, item_suspect = encoded
        digest = base_hash.copy()
        digest.update(item_text[1:] + str(index).encode("ascii"))
        new_id = digest.hexdigest()
        if sendable and not item_suspect and "" not in item.values():
            yield JsonDoc((opening, item_text[1:-1], b', "id": "', new_id.encode("ascii"), b'"}'), new_id)
        else:
            whole = {**{k: doc[k] for k in kept}, **item}
            whole["id"] = new_id
            yield drop_empty(whole)


def doc_id(doc: Any) -> str:
    """The ``id`` of a document given as a dict or a :class:`JsonDoc`."""
    return doc.id if isinstance(doc, JsonDoc) else doc["id"]


# ---------------------------------------------------------------------------------------
# streaming a document's activities
# ---------------------------------------------------------------------------------------


class _StageProblem(Exception):
    """An expected per-document problem that ends the attempt (becomes a failed outcome)."""

    def __init__(self, code: str, message: str, *, retryable: bool):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


LakeReader = Callable[[str, int], tuple[str, str]]  # str or LakeLiteral


@dataclass
class _Counts:
    activities: int = 0
    transactions: int = 0
    budgets: int = 0
    skipped_no_identifier: int = 0
    consumed: int = 0  # flattened activities read so far (with or without identifier)


def _iter_flat_file(path: str) -> Iterator[dict[str, Any]]:
    decode = msgspec.json.Decoder().decode
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                activity = decode(line)
            except msgspec.DecodeError as exc:
                message = f"flat file line {number} is not JSON: {exc}"
                raise _StageProblem("flat_invalid", message, retryable=False) from exc
            if not isinstance(activity, dict):
                raise _StageProblem("flat_invalid", f"flat file line {number} is not an object", retryable=False)
            yield activity


def _documents(
    activities: Iterable[Mapping[str, Any]],
    document_id: str,
    document_hash: str,
    counts: _Counts,
    lake: LakeReader | None,
    limit: int | None = None,
) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(role, Solr document, approximate size) in file order; ``lake=None`` leaves out the lake text."""
    occurrences: dict[str, int] = {}
    if limit is not None:
        activities = itertools.islice(activities, limit)  # never reads (or parses) the line after
    for activity in activities:
        counts.consumed += 1
        identifier = activity_identifier(activity)
        if not identifier:
            counts.skipped_no_identifier += 1
            continue
        occurrence = occurrences.get(identifier, 0)
        occurrences[identifier] = occurrence + 1
        xml, json_text = lake(identifier, occurrence) if lake is not None else (None, None)
        built = activity_documents(
            activity,
            document_id=document_id,
            document_hash=document_hash,
            occurrence=occurrence,
            iati_xml=xml,
            iati_json=json_text,
            serialised=lake is not None,
        )
        counts.activities += 1
        counts.transactions += len(built.transaction)
        counts.budgets += len(built.budget)
        yield from built.sized()


def _lake_reader(blobs: BlobStore, container: str, document_id: str) -> LakeReader:
    def read(identifier: str, occurrence: int) -> tuple[str, str]:
        texts = []
        for extension in ("xml", "json"):
            name = lake_name(document_id, identifier, occurrence, extension)
            try:
                data = blobs.get_bytes(container, name)
            except BlobNotFound as exc:
                raise _StageProblem(
                    "lake_missing",
                    f"lake blob {container}/{name} is missing (activity {identifier!r})",
                    retryable=False,
                ) from exc
            except BlobStorageError as exc:
                raise _StageProblem("blob_storage_error", f"reading {container}/{name}: {exc}", retryable=True) from exc
            texts.append(data.decode("utf-8", errors="replace"))
        return texts[0], texts[1]

    return read


class _CleanFileLake:
    """The lake texts rebuilt from the clean file, in step with the flattened activities.

    Lakify's blobs are a pure function of the clean file (:func:`iter_lake_entries`), and
    both that stream and the flat file list activities in document order with the same
    identifier rule, so the index stage reads one blob (the clean file) instead of two per
    activity: on a blob service each small read costs milliseconds of client and server
    time, far more than parsing the activity again.  The first time the two streams
    disagree (or the clean file cannot be read or parsed), it falls back to reading the
    stored lake blobs for the rest of the document, so a missing blob is still reported.
    Memory is bounded by one activity.
    """

    def __init__(self, blobs: BlobStore, settings: Settings, document_id: str, document_hash: str, tmp: str):
        from iati_refresher.stages.lakify import iter_lake_entries

        self._fallback = _lake_reader(blobs, settings.lake_container, document_id)
        self._entries: Iterator[Any] | None = None
        path = os.path.join(tmp, "clean.xml")
        with contextlib.suppress(BlobNotFound, BlobStorageError):
            blobs.get_to_file(settings.clean_container, f"{document_hash}.xml", path)
            self._entries = iter_lake_entries(path)

    def __call__(self, identifier: str, occurrence: int) -> tuple[str, str]:
        if self._entries is not None:
            try:
                entry = next(self._entries, None)
            except (ValueError, OSError, SyntaxError):  # not IATI, refused, unparseable: read the blobs
                entry = None
            if entry is not None and entry.identifier == identifier and entry.occurrence == occurrence:
                return entry.xml.decode("utf-8", errors="replace"), entry.json
            self.close()
        return self._fallback(identifier, occurrence)

    def close(self) -> None:
        if self._entries is not None:
            self._entries.close()  # type: ignore[attr-defined]
            self._entries = None


class _BundleLake:
    """The lake texts from the version's lake bundle (one blob, written by lakify), in step
    with the flattened activities; without a bundle, :class:`_CleanFileLake`.  If the bundle
    disagrees with the activities, the rest is read from the lake blobs."""

    def __init__(self, blobs: BlobStore, settings: Settings, document_id: str, document_hash: str, tmp: str):
        from iati_refresher.stages.lakify import lake_bundle_name

        self._blobs, self._settings, self._document_id = blobs, settings, document_id
        self._file: TextIO | None = None
        self._rest: LakeReader | None = None
        path = os.path.join(tmp, "lake.tsv")
        try:
            blobs.get_to_file(settings.flat_container, lake_bundle_name(document_id, document_hash), path)
            self._file = open(path, encoding="ascii")  # noqa: SIM115 (closed by close())
        except BlobNotFound:  # lakified before bundles existed
            self._rest = _CleanFileLake(blobs, settings, document_id, document_hash, tmp)
        except BlobStorageError as exc:  # the same texts, read another way; a storage outage fails there
            log.warning("index %s: the lake bundle could not be read (%s); using the clean file", document_id, exc)
            self._rest = _CleanFileLake(blobs, settings, document_id, document_hash, tmp)

    def __call__(self, identifier: str, occurrence: int) -> tuple[str, str]:
        if self._file is not None:
            line = self._file.readline()
            fields = line.rstrip("\n").split("\t")
            # (bundles written before the cleaning flag have four fields)
            if len(fields) in (4, 5) and fields[1] == str(occurrence) and json.loads(fields[0]) == identifier:
                suspect = None if len(fields) == 4 else fields[4] != "0"
                return LakeLiteral.of(fields[2], suspect), LakeLiteral.of(fields[3], suspect)
            log.warning(
                "index %s: the lake bundle does not match activity %r (#%d); reading the lake blobs from here on",
                self._document_id,
                identifier,
                occurrence,
            )
            self.close()
            self._rest = _lake_reader(self._blobs, self._settings.lake_container, self._document_id)
        assert self._rest is not None
        return self._rest(identifier, occurrence)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if isinstance(self._rest, _CleanFileLake):
            self._rest.close()


@dataclass
class _Batches:
    """Per-collection buffers, each sent once it holds ``size`` documents."""

    solr: SolrClient
    size: int
    commit_within_ms: int
    docs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {role: [] for role in ROLES})
    chars: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))

    def add(self, role: str, doc: dict[str, Any], chars: int) -> None:
        self.docs[role].append(doc)
        self.chars[role] += chars
        if len(self.docs[role]) >= self.size or self.chars[role] >= MAX_BATCH_CHARS:
            self.flush(role)

    def flush(self, role: str) -> None:
        if self.docs[role]:
            self.solr.add(role, self.docs[role], self.commit_within_ms)
        self.docs[role] = []
        self.chars[role] = 0

    def flush_all(self) -> None:
        for role in ROLES:
            self.flush(role)


def _no_activities(manifest: Any) -> bool:
    """Whether the flatten manifest says the version has no activities at all."""
    if isinstance(manifest, list):
        return not manifest
    if isinstance(manifest, dict):
        return manifest.get("activities") == 0
    return False


def _failed(document_id: str, exc: SolrError | _StageProblem, doing: str, extra: str = "") -> Outcome:
    if isinstance(exc, SolrError):
        return Outcome.failed(document_id, f"solr_{exc.kind}", f"{doing}: {exc}{extra}", retryable=exc.retryable)
    return Outcome.failed(document_id, exc.code, f"{doing}: {exc}{extra}", retryable=exc.retryable)


# ---------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------


def index_document(doc: Mapping[str, Any], blobs: BlobStore, solr: SolrClient, settings: Settings) -> Outcome:
    """Index one document's current version into the three collections without a search gap.

    :param doc: ``id``, ``hash`` and ``flattened_activities`` (the flatten manifest; ``[]``
        or ``{"activities": 0}`` means the version has no activities; a non-empty list of
        activity dicts is indexed as is).  Other keys are ignored.  The activities are read
        from the manifest's ``container``/``blob`` (default ``flat/{id}/{hash}.jsonl``) and
        the lake from ``lake/{id}/...``.
    :param blobs: blob storage holding the flat and lake containers.
    :param solr: a client whose roles map to the write aliases.
    :return: ``ok`` with data ``activities``, ``transactions``, ``budgets``,
        ``skipped_no_identifier`` and ``removed`` (old documents deleted); ``failed`` with
        code ``solr_<kind>`` (retryable for server/timeout/connection), ``lake_missing``
        (lakify must run again), ``flat_missing`` / ``flat_invalid`` (flatten must run
        again) or ``blob_storage_error`` (retryable).  After a failure while adding, the
        previous version's documents are all still there.
    """
    document_id, document_hash = str(doc["id"]), str(doc["hash"])
    manifest = doc.get("flattened_activities")
    in_document = field_query(DOCUMENT_ID_FIELD, document_id)
    commit_within = settings.solr_commit_within_ms

    # 1. What the dataset has in Solr now.  True marks an id the new version rewrote.
    try:
        old: dict[str, dict[str, bool]] = {
            role: dict.fromkeys(solr.iter_ids(role, in_document), False) for role in ROLES
        }
    except SolrError as exc:
        return _failed(document_id, exc, "reading the documents already indexed")
    old_total = sum(len(ids) for ids in old.values())

    if _no_activities(manifest):
        try:
            for role in ROLES:
                solr.delete_query(role, in_document, commit_within)
        except SolrError as exc:
            return _failed(document_id, exc, "removing the documents of a version without activities")
        return Outcome.ok(
            document_id, activities=0, transactions=0, budgets=0, skipped_no_identifier=0, removed=old_total
        )

    with tempfile.TemporaryDirectory(prefix="index-") as tmp:
        try:
            source = _flat_source(manifest, blobs, settings, document_id, document_hash, tmp)
        except _StageProblem as exc:
            return _failed(document_id, exc, "reading the flattened activities")

        # 2. Stream the new version in batches.
        counts = _Counts()
        batches = _Batches(solr, max(1, settings.solr_batch_size), commit_within)
        lake = _BundleLake(blobs, settings, document_id, document_hash, tmp)
        try:
            for role, solr_doc, chars in _documents(source(), document_id, document_hash, counts, lake):
                ids, new_id = old[role], doc_id(solr_doc)
                if new_id in ids:
                    ids[new_id] = True
                batches.add(role, solr_doc, chars)
            batches.flush_all()
        except (SolrError, _StageProblem) as exc:
            undo = _rollback(solr, source, document_id, document_hash, old, counts.consumed, commit_within)
            doing = "adding documents" if isinstance(exc, SolrError) else "building documents"
            return _failed(document_id, exc, doing, f"; previous version kept ({undo})")
        except Exception:
            # A bug: still try to leave the previous version as it was, then let it surface.
            with contextlib.suppress(Exception):
                _rollback(solr, source, document_id, document_hash, old, counts.consumed, commit_within)
            raise
        finally:
            lake.close()

    # 3. Remove what the new version no longer has.
    removed = 0
    try:
        for role in ROLES:
            stale = [doc_id for doc_id, rewritten in old[role].items() if not rewritten]
            removed += solr.delete_ids(role, stale, commit_within)
            # Documents of any other version that were not yet searchable when step 1 ran
            # (an earlier attempt within the commit interval): every document just written
            # carries this hash, so nothing current matches.
            solr.delete_query(
                role, f"{in_document} AND NOT {DOCUMENT_HASH_FIELD}:{quote(document_hash)}", commit_within
            )
    except SolrError as exc:
        # The new version is complete; the next attempt rewrites it and removes the rest.
        return _failed(document_id, exc, "new version indexed, but removing old documents failed")
    return Outcome.ok(
        document_id,
        activities=counts.activities,
        transactions=counts.transactions,
        budgets=counts.budgets,
        skipped_no_identifier=counts.skipped_no_identifier,
        removed=removed,
    )


def _flat_source(
    manifest: Any, blobs: BlobStore, settings: Settings, document_id: str, document_hash: str, tmp: str
) -> Callable[[], Iterable[Mapping[str, Any]]]:
    """A re-iterable source of flattened activities (inline list, or the downloaded flat blob)."""
    if isinstance(manifest, list) and manifest:
        activities = [a for a in manifest if isinstance(a, dict)]
        return lambda: activities
    # The flatten manifest names its blob; the fixed name is the fallback.
    described = manifest if isinstance(manifest, dict) else {}
    container = str(described.get("container") or settings.flat_container)
    name = str(described.get("blob") or f"{document_id}/{document_hash}.jsonl")
    path = os.path.join(tmp, "flat.jsonl")
    try:
        blobs.get_to_file(container, name, path)
    except BlobNotFound as exc:
        raise _StageProblem("flat_missing", f"{container}/{name} is missing", retryable=False) from exc
    except BlobStorageError as exc:
        raise _StageProblem("blob_storage_error", f"{container}/{name}: {exc}", retryable=True) from exc
    return lambda: _iter_flat_file(path)


def _rollback(
    solr: SolrClient,
    source: Callable[[], Iterable[Mapping[str, Any]]],
    document_id: str,
    document_hash: str,
    old: Mapping[str, Mapping[str, bool]],
    consumed: int,
    commit_within_ms: int,
) -> str:
    """Delete the ids a failed attempt may have added that the previous version did not have.

    Ids are deterministic, so they are derived again from the activities the attempt had
    read instead of being remembered (the old ids stay the only per-document set).
    Best effort: returns a short note for the outcome message.
    """
    pending: dict[str, list[str]] = {role: [] for role in ROLES}
    deleted = 0
    try:
        counts = _Counts()
        for role, solr_doc, _ in _documents(source(), document_id, document_hash, counts, None, limit=consumed):
            if solr_doc["id"] not in old[role]:
                pending[role].append(solr_doc["id"])
                if len(pending[role]) >= ROLLBACK_CHUNK:
                    deleted += solr.delete_ids(role, pending[role], commit_within_ms)
                    pending[role] = []
        for role in ROLES:
            deleted += solr.delete_ids(role, pending[role], commit_within_ms)
    except (SolrError, _StageProblem) as exc:
        log.warning("index %s: removing the partly added version failed: %s", document_id, exc)
        return f"removing the partly added documents failed: {exc}"
    return f"ids of {deleted} new documents deleted again"


def unindex_document(document_id: str, solr: SolrClient, settings: Settings) -> int:
    """Delete a dataset from all three collections (a stale or removed dataset).

    :return: how many documents it had (as counted just before the delete).
    :raises SolrError: when Solr fails; nothing is recorded as removed then.
    """
    query = field_query(DOCUMENT_ID_FIELD, document_id)
    total = 0
    for role in ROLES:
        total += solr.count(role, query)
        solr.delete_query(role, query, settings.solr_commit_within_ms)
    return total


class ReconcileRefused(RuntimeError):
    """Reconciliation would delete more than the allowed share of a collection."""


def reconcile(
    solr: SolrClient,
    expected: Mapping[str, str | Iterable[str]],
    settings: Settings,
    *,
    max_share: float = 0.5,
    page_size: int = 5000,
) -> dict[str, dict[str, int]]:
    """Delete Solr documents of datasets that should not be there, or not in that version.

    Every document is read (``id`` order, cursor paging, two small fields) and grouped by
    (document id, hash).  A group whose document id is not in ``expected`` is *orphaned*;
    one whose hash is not the expected hash is *stale*.  Both are deleted by query.

    :param expected: document id → the hash that should be indexed, or several acceptable
        hashes.  Pass the hash being indexed too for documents whose index stage may be
        running, or their new documents would count as stale.
    :param max_share: refuse (:class:`ReconcileRefused`, nothing deleted) when a collection
        would lose more than this share of its documents — an empty or wrong ``expected``
        must not wipe the index.
    :return: per collection role: ``scanned``, ``orphaned`` and ``stale_hash`` document counts.
    """
    accepted = {doc_id: {hashes} if isinstance(hashes, str) else set(hashes) for doc_id, hashes in expected.items()}
    plans: dict[str, dict[tuple[str, str], int]] = {}
    report: dict[str, dict[str, int]] = {}
    for role in ROLES:
        groups: dict[tuple[str, str], int] = {}
        scanned = 0
        fl = f"id,{DOCUMENT_ID_FIELD},{DOCUMENT_HASH_FIELD}"
        for found in solr.iter_docs(role, "*:*", fl=fl, page_size=page_size):
            scanned += 1
            key = (str(found.get(DOCUMENT_ID_FIELD, "")), str(found.get(DOCUMENT_HASH_FIELD, "")))
            if key[0] not in accepted or key[1] not in accepted[key[0]]:
                groups[key] = groups.get(key, 0) + 1
        orphaned = sum(n for (doc_id, _), n in groups.items() if doc_id not in accepted)
        stale = sum(groups.values()) - orphaned
        if scanned and (orphaned + stale) > max_share * scanned:
            raise ReconcileRefused(
                f"{role}: {orphaned + stale} of {scanned} documents would be deleted "
                f"(more than {max_share:.0%}); check the expected versions"
            )
        plans[role] = groups
        report[role] = {"scanned": scanned, "orphaned": orphaned, "stale_hash": stale}
    for role, groups in plans.items():
        queries = {
            field_query(DOCUMENT_ID_FIELD, doc_id)
            + (f" AND {field_query(DOCUMENT_HASH_FIELD, hash_)}" if doc_id in accepted else "")
            for doc_id, hash_ in groups
        }
        for query in sorted(queries):
            solr.delete_query(role, query, settings.solr_commit_within_ms)
    return report
