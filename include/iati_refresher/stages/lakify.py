"""Lakify: each activity of a clean file as its own XML and JSON blob (the "activity lake").

The index stage reads these blobs into the Solr fields ``iati_xml`` (returned verbatim by
XML downloads, which concatenate them) and ``iati_json`` (returned by ``/iati_json``), so
both keep the reference's exact shapes (reference facts §2.8):

* XML: the ``iati-activity`` element serialised as UTF-8 without an XML declaration,
  carrying the namespace declarations in scope (lxml copies them onto the element);
* JSON: the ``recursive_json_nest`` form, ``{"iati-activity": [{...}]}``, with ``@attr``
  keys, ``text()``, one list per child tag in document order, ``comment()`` and ``PI()``,
  Clark names for namespaced tags and ``xml:`` for the XML namespace.

Blob names come from :func:`iati_refresher.iati.identifiers.lake_name`; activities are
identified with :func:`~iati_refresher.iati.identifiers.identifier_of`, the rule flatten
and indexing share. The file is streamed: memory is bounded by the largest activity.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from lxml import etree

from iati_refresher.iati.accelerated import compiled
from iati_refresher.iati.encoding import sniff_encoding, utf8_view
from iati_refresher.iati.identifiers import identifier_of, lake_name
from iati_refresher.iati.xml import (
    IATI_ACTIVITIES,
    IATI_ACTIVITY,
    XmlRefused,
    activities_root,
    check_prolog,
    iter_root_activities,
    safe_iterparse,
)
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.solr_client import needs_cleaning
from iati_refresher.stages.flatten import (
    XML_NAMESPACE,
    NotIatiError,
    count_recovered_errors,
    describe_input_error,
)
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore, LocalBlobStore

_XML_CLARK = "{" + XML_NAMESPACE + "}"
_COMMENT = etree.Comment
_PI = etree.PI
_ENTITY = etree.Entity
_NARRATIVE = "narrative"


@dataclass(frozen=True)
class LakeEntry:
    """One activity's lake blobs.

    :param identifier: the normalised identifier (never empty).
    :param occurrence: how many earlier activities of the document had the same identifier.
    :param xml: the element as UTF-8 bytes, no declaration, no tail.
    :param json: the ``recursive_json_nest`` form as JSON text.
    """

    identifier: str
    occurrence: int
    xml: bytes
    json: str


class _ExactPathNeeded(Exception):
    """The fast nesting met a comment, a PI or an element nested in one with the same tag."""


def _attribute_key(name: str) -> str:
    key = _ATTRIBUTE_KEYS.get(name)
    if key is None:
        key = "@xml:" + name[len(_XML_CLARK) :] if name.startswith(_XML_CLARK) else "@" + name
        if len(_ATTRIBUTE_KEYS) < 10_000:  # publishers' attribute names are few; stay bounded anyway
            _ATTRIBUTE_KEYS[name] = key
    return key


_ATTRIBUTE_KEYS: dict[str, str] = {}


def _fast_nest(element: Any, tag: str, path: set[str]) -> dict[str, Any]:
    """``recursive_json_nest`` of an element without comments, PIs or same-tag nesting.

    Without those, an element's ``text()`` is simply its own text when that is not blank.
    ``path`` holds the tags of the element's ancestors within the activity.  Leaf
    children (most elements) are handled inline: this is the hot loop of the stage.
    """
    node: dict[str, Any] = {}
    keys = _ATTRIBUTE_KEYS
    items = element.items()
    if items:
        for name, value in items:
            key = keys.get(name)
            node[key if key is not None else _attribute_key(name)] = value
    text = element.text
    if text and not text.isspace():
        node["text()"] = text
    elif tag == _NARRATIVE:
        node["text()"] = ""
    if len(element):
        path.add(tag)
        for child in element:
            child_tag = child.tag
            if child_tag.__class__ is not str or child_tag in path:
                raise _ExactPathNeeded
            if len(child):
                value = _fast_nest(child, child_tag, path)
            else:
                value = {}
                items = child.items()
                if items:
                    for name, attribute in items:
                        key = keys.get(name)
                        value[key if key is not None else _attribute_key(name)] = attribute
                text = child.text
                if text and not text.isspace():
                    value["text()"] = text
                elif child_tag == _NARRATIVE:
                    value["text()"] = ""
            entries = node.get(child_tag)
            if entries is None:
                node[child_tag] = [value]
            else:
                entries.append(value)
        path.discard(tag)
    return node


def _exact_nest(element: Any) -> dict[str, Any]:
    """``recursive_json_nest`` of any element (the reference's rules, one by one).

    An element whose own text is blank takes the stripped pieces of
    ``itertext(tag=<its tag>)`` as ``text()``: that is how text floating after a comment
    (a comment's tail) becomes the text of the element holding the comment.
    """
    node: dict[str, Any] = {}
    for name, attribute in element.attrib.items():
        node[_attribute_key(name)] = attribute
    text = element.text
    if text and text.strip():
        node["text()"] = text
    else:
        floating = "".join(piece.strip() for piece in element.itertext(tag=element.tag)) if len(element) else ""
        if floating:
            node["text()"] = floating
        elif element.tag == _NARRATIVE:
            node["text()"] = ""
    for child in element:
        tag = child.tag
        if tag is _ENTITY:
            continue  # an undefined entity the recovering parser kept as a reference: no text to give
        if tag is _COMMENT or tag is _PI:
            key = "comment()" if tag is _COMMENT else "PI()"
            content = child.text
            value: dict[str, Any] = {"text()": content} if content and content.strip() else {}
        else:
            key = tag
            value = _exact_nest(child)
        node.setdefault(key, []).append(value)
    return node


def nest_activity(activity: Any) -> dict[str, Any]:
    """The ``recursive_json_nest`` dict of an ``iati-activity`` element."""
    try:
        body = _fast_nest(activity, activity.tag, set())
    except _ExactPathNeeded:
        body = _exact_nest(activity)
    return {activity.tag: [body]}


def activity_json(activity: Any) -> str:
    """``nest_activity`` as JSON text (non-ASCII kept, default separators).

    The compiled walk writes it directly when it is built and the activity needs only the
    fast rules; :func:`nest_activity` is the definition both follow.
    """
    if compiled is not None:
        text = compiled.nest_json(activity)
        if text is not None:
            return str(text)
    return _dumps(nest_activity(activity))


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def activity_xml(activity: Any) -> bytes:
    """The element as UTF-8, without an XML declaration and without its tail text."""
    return etree.tostring(activity, encoding="utf-8", xml_declaration=False, with_tail=False)


class _EntryStream:
    """Streams the lake entries of one parsed view, with counts for the outcome."""

    def __init__(self, path: str):
        self.path = path
        self.skipped_no_identifier = 0
        self.duplicates = 0
        self.recovered_errors = 0

    def __iter__(self) -> Iterator[LakeEntry]:
        # Recovering like flatten, so both stages see the same activities (comments and
        # PIs are kept here: the lake keeps them).
        context = safe_iterparse(self.path, events=("start", "end"), tag=(IATI_ACTIVITIES, IATI_ACTIVITY), recover=True)
        seen: dict[str, int] = collections.defaultdict(int)
        root = None
        events = iter(context)
        try:
            root = activities_root(events)
            for element in iter_root_activities(events, root):
                identifier = identifier_of(element)
                if identifier:
                    occurrence = seen[identifier]
                    seen[identifier] = occurrence + 1
                    if occurrence:
                        self.duplicates += 1
                    yield LakeEntry(identifier, occurrence, activity_xml(element), activity_json(element))
                else:
                    self.skipped_no_identifier += 1
        finally:
            self.recovered_errors = count_recovered_errors(context.error_log)
        if root is None:
            raise NotIatiError("Non-IATI XML: no iati-activities root element")


def iter_lake_entries(path: str | os.PathLike[str]) -> Iterator[LakeEntry]:
    """Yield a :class:`LakeEntry` per activity that has an identifier, in document order.

    :raises NotIatiError: the root element is not ``iati-activities``.
    :raises XmlRefused: the file declares a DOCTYPE or entities.
    :raises lxml.etree.XMLSyntaxError: the file is not XML at all (e.g. empty).
    """
    yield from _stream(path, None)


def _stream(path: str | os.PathLike[str], stats: list[_EntryStream] | None) -> Iterator[LakeEntry]:
    info = sniff_encoding(path)
    check_prolog(path, info.encoding)
    with utf8_view(path, info) as view:
        stream = _EntryStream(view)
        if stats is not None:
            stats.append(stream)
        yield from stream


def lakify_file(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], document_id: str | None = None
) -> dict[str, int]:
    """Write the lake blobs of ``path`` under ``out_dir`` (``refresher lakify FILE OUTDIR``).

    Files are named as in the lake container, ``{sha1}[--n].xml|json``, under a
    ``{document_id}/`` folder when a document id is given.

    :return: ``activities``, ``skipped_no_identifier`` and ``duplicates`` counts.
    :raises NotIatiError, XmlRefused, lxml.etree.XMLSyntaxError, OSError: bad input.
    """
    stats: list[_EntryStream] = []
    count = 0
    for entry in _stream(path, stats):
        for extension, data in (("xml", entry.xml), ("json", entry.json.encode("utf-8"))):
            name = lake_name(document_id or "-", entry.identifier, entry.occurrence, extension)
            target = os.path.join(out_dir, name if document_id else name.split("/", 1)[1])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        count += 1
    stream = stats[0] if stats else _EntryStream("")
    return {"activities": count, "skipped_no_identifier": stream.skipped_no_identifier, "duplicates": stream.duplicates}


def cli_lakify(path: str, out_dir: str, err: TextIO, document_id: str | None = None) -> int:
    """``refresher lakify FILE OUTDIR``: the lake blobs of FILE as files under OUTDIR.

    :return: the exit status: 0, or 1 after writing a clear message to ``err``.
    """
    try:
        counts = lakify_file(path, out_dir, document_id)
    except (NotIatiError, XmlRefused, etree.XMLSyntaxError, OSError) as exc:
        err.write(f"{describe_input_error(exc, path)}\n")
        return 1
    err.write(
        f"{counts['activities']} activities written to {out_dir}"
        f" ({counts['duplicates']} duplicate identifiers, {counts['skipped_no_identifier']} without identifier)\n"
    )
    return 0


LAKE_BUNDLE_SUFFIX = ".lake.tsv"


def lake_bundle_name(doc_id: str, hash_: str) -> str:
    """The version's lake bundle in the flat container: every lake entry of the version in
    one blob, so that indexing reads one blob instead of parsing the clean file again."""
    return f"{doc_id}/{hash_}{LAKE_BUNDLE_SUFFIX}"


def bundle_line(entry: LakeEntry) -> bytes:
    """One bundle line: identifier, occurrence, the XML and the JSON as JSON string literals
    (ASCII, so no tab or newline inside a field), and ``1`` when either literal needs cleaning
    before it goes to Solr (:func:`~iati_refresher.solr_client.needs_cleaning`) else ``0``,
    tab-separated.

    Index splices the two literals into its Solr requests as they are (ASCII text keeps its
    string handling fast)."""
    xml, xml_suspect = _literal(entry.xml)
    text, text_suspect = _literal(entry.json.encode("utf-8"))
    head = f"{json.dumps(entry.identifier)}\t{entry.occurrence}\t".encode()
    return b"".join((head, xml, b"\t", text, b"\t1\n" if xml_suspect or text_suspect else b"\t0\n"))


def _literal(text: bytes) -> tuple[bytes, bool]:
    if compiled is not None:
        checked = compiled.ascii_literal_checked(text)
        if checked is not None:
            return bytes(checked[0]), bool(checked[1])
    literal = json.dumps(text.decode("utf-8", "replace"))
    return literal.encode("ascii"), needs_cleaning(literal)


def lakify_document(doc: dict[str, Any], blobs: BlobStore, settings: Settings) -> Outcome:
    """Write one document's activities to the lake and delete the blobs it no longer has.

    :return: ``ok`` with ``activities``, ``skipped_no_identifier`` and ``duplicates``;
        ``skipped`` (``not_iati``, ``doctype_refused``); ``failed`` (``clean_missing``,
        ``parse_error``: not retryable; ``storage_error``: retryable).
    """
    doc_id, hash_ = str(doc["id"]), str(doc["hash"])
    written: set[str] = set()
    unchanged: list[int] = [0]
    stats: list[_EntryStream] = []
    with tempfile.TemporaryDirectory(prefix="lakify-") as tmp:
        source = os.path.join(tmp, "clean.xml")
        try:
            blobs.get_to_file(settings.clean_container, f"{hash_}.xml", source)
        except BlobNotFound:
            return Outcome.failed(doc_id, "clean_missing", f"clean/{hash_}.xml does not exist", retryable=False)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not read the clean file: {exc}", retryable=True)
        try:
            # what the lake holds for the document now: unchanged blobs are not uploaded
            # again (a republished dataset mostly repeats its activities), stale ones go
            existing = blobs.list_digests(settings.lake_container, f"{doc_id}/")
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not list the lake blobs: {exc}", retryable=True)
        bundle_path = os.path.join(tmp, "lake.tsv")
        try:
            with open(bundle_path, "wb") as bundle:
                _upload_entries(
                    _bundled(_stream(source, stats), bundle), doc_id, blobs, settings, written, existing, unchanged
                )
            bundle_name = lake_bundle_name(doc_id, hash_)
            blobs.put_file(settings.flat_container, bundle_name, bundle_path)
        except NotIatiError as exc:
            return Outcome.skipped(doc_id, "not_iati", str(exc))
        except XmlRefused as exc:
            return Outcome.skipped(doc_id, exc.code, str(exc))
        except etree.XMLSyntaxError as exc:
            return Outcome.failed(doc_id, "parse_error", f"Could not parse: {exc}", retryable=False)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not store a lake blob: {exc}", retryable=True)
    try:
        # Activities of older versions must not linger (the reference never deleted them).
        stale = [name for name in existing if name not in written]
        if stale:
            blobs.delete(settings.lake_container, stale)
        old_bundles = [
            name
            for name in blobs.list(settings.flat_container, f"{doc_id}/")
            if name.endswith(LAKE_BUNDLE_SUFFIX) and name != bundle_name
        ]
        if old_bundles:
            blobs.delete(settings.flat_container, old_bundles)
    except BlobStorageError as exc:
        return Outcome.failed(doc_id, "storage_error", f"could not delete old lake blobs: {exc}", retryable=True)
    stream = stats[0]
    data: dict[str, Any] = {
        "activities": len(written) // 2,
        "skipped_no_identifier": stream.skipped_no_identifier,
        "duplicates": stream.duplicates,
    }
    if stream.recovered_errors:
        data["recovered_errors"] = stream.recovered_errors
    if unchanged[0]:
        data["unchanged_blobs"] = unchanged[0]
    return Outcome.ok(doc_id, **data)


def _bundled(entries: Iterator[LakeEntry], bundle: BinaryIO) -> Iterator[LakeEntry]:
    for entry in entries:
        bundle.write(bundle_line(entry))
        yield entry


def _upload_entries(
    entries: Iterator[LakeEntry],
    doc_id: str,
    blobs: BlobStore,
    settings: Settings,
    written: set[str],
    existing: dict[str, bytes | None] | None = None,
    unchanged: list[int] | None = None,
) -> None:
    """Upload each entry's two blobs; the first upload error is raised.

    A blob whose stored MD5 (``existing``) equals the new content's is not uploaded again;
    ``unchanged[0]`` counts them.

    A remote store (Azure) is I/O bound on many small blobs, so ``lake_upload_threads``
    threads upload while the file is parsed, with a bounded number of entries in flight
    (memory stays flat).  A local directory store has no latency to hide and threads
    only contend for the GIL with the parser, so it is written inline.
    """
    container = settings.lake_container

    digests = existing or {}
    skipped = unchanged if unchanged is not None else [0]
    count_lock = threading.Lock()

    def upload(entry: LakeEntry) -> None:
        xml_name, json_name = _names(doc_id, entry)
        written.add(xml_name)
        written.add(json_name)
        for name, data in ((xml_name, entry.xml), (json_name, entry.json.encode("utf-8"))):
            stored = digests.get(name)
            if stored is not None and stored == hashlib.md5(data, usedforsecurity=False).digest():
                with count_lock:
                    skipped[0] += 1
                continue
            blobs.put_bytes(container, name, data)

    workers = 0 if isinstance(blobs, LocalBlobStore) else settings.lake_upload_threads
    if workers <= 0:
        for entry in entries:
            upload(entry)
        return
    in_flight: collections.deque[Future[None]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lake-upload") as pool:
        try:
            for entry in entries:
                in_flight.append(pool.submit(upload, entry))
                while len(in_flight) > 2 * workers:
                    in_flight.popleft().result()
            while in_flight:
                in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


def _names(doc_id: str, entry: LakeEntry) -> tuple[str, str]:
    return (
        lake_name(doc_id, entry.identifier, entry.occurrence, "xml"),
        lake_name(doc_id, entry.identifier, entry.occurrence, "json"),
    )
