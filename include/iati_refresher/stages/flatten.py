"""Flatten: every activity of a clean file as one flat dict of Solr search fields.

The naming and value rules are the reference Flattener's, because Solr field names and
the front ends that query them depend on them (reference facts §2.7, docs/DEVIATIONS.md
for the deliberate differences):

* a field is named by its path from the activity: ``reporting-org/narrative/@xml:lang``
  → ``reporting_org_narrative_xml_lang`` (``-`` and ``:`` become ``_``); the activity's
  own attributes have no prefix; namespaced names use the prefix the publisher declared;
* values are stripped strings; blank element text is skipped, blank attributes are kept
  as ``""``; a repeated field becomes a list in document order (no alignment padding);
* date fields are normalised by :mod:`iati_refresher.iati.dates` (dropped when unusable);
* ``dataset_version`` (always), ``dataset_generated_datetime`` and
  ``dataset_linked_data_default`` are copied from the root into every activity;
* each direct ``transaction`` / ``budget`` child also becomes one dict in the activity's
  ``@transaction`` / ``@budget`` list, for the exploded Solr collections.

The file is streamed: memory is bounded by the largest single activity.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec
from lxml import etree

from iati_refresher.iati.accelerated import compiled
from iati_refresher.iati.dates import is_date_field, normalise_date
from iati_refresher.iati.encoding import sniff_encoding, utf8_view
from iati_refresher.iati.identifiers import identifier_of
from iati_refresher.iati.xml import (
    IATI_ACTIVITIES,
    IATI_ACTIVITY,
    NotIatiError,
    XmlRefused,
    activities_root,
    check_prolog,
    iter_root_activities,
    safe_iterparse,
)
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore

IATI_IDENTIFIER = "iati-identifier"
EXPLODE_ELEMENTS = ("transaction", "budget")
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
_MAX_NAMINGS = 64  # name caches kept per distinct activity namespace map


@dataclass(frozen=True)
class FlattenResult:
    """What :func:`flatten_file` wrote.

    :param activities: number of JSON lines (one per activity).
    :param bytes: size of the JSON lines file.
    :param recovered_errors: XML errors the recovering parser worked around (0 for a
        well-formed file); the reference tolerated them silently.
    """

    activities: int
    bytes: int
    recovered_errors: int = 0


def _simple_name(name: str) -> str:
    return name.replace("-", "_").replace(":", "_")


class _Naming:
    """Field-name rules for one in-scope namespace map, with a cache per element path.

    Each element path has a node ``[field prefix, text rule, attribute table, child table]``:
    the text rule says whether the element's text is a date field (``None``: ignore the
    element's own text); the attribute table maps attribute names to (field name, is a
    date); the child table maps child tags to their nodes.
    """

    def __init__(self, nsmap: dict[str | None, str]):
        # namespace URI → prefix declared at the activity (the default namespace has none)
        # (the first prefix declared for a URI wins, as in the reference)
        self.prefixes: dict[str, str] = {}
        for prefix, uri in nsmap.items():
            if prefix is not None:
                self.prefixes.setdefault(uri, prefix)
        self.prefixes[XML_NAMESPACE] = "xml"
        self.activity: list[Any] = ["", None, {}, {}]
        # iati-identifier: its value comes from identifier_of, not from its text
        self.identifier: list[Any] = [_simple_name(IATI_IDENTIFIER), None, {}, {}]

    def local(self, name: str, element: Any) -> str:
        """A tag or attribute name without its path (``bigorg:applicant`` → ``bigorg_applicant``)."""
        if name[0] != "{":
            return _simple_name(name)  # no namespace, or an undeclared prefix kept literally
        uri, local = name[1:].split("}", 1)
        prefix = self.prefixes.get(uri)
        if prefix is None:
            # Declared below the activity: use the prefix the publisher wrote (the
            # reference kept the Clark form here, e.g. ``{http_//bo.org/}fin``).
            prefix = next((p for p, u in element.nsmap.items() if u == uri and p is not None), None)
            if prefix is None:
                return _simple_name(name)  # a default namespace has no prefix: keep Clark form
        # the reference replaced '-' in the whole name, prefix included
        return f"{_simple_name(prefix)}_{_simple_name(local)}"

    def _cacheable(self, name: str) -> bool:
        """Names in a namespace declared below the activity depend on the element: not cached."""
        return name[0] != "{" or name[1:].split("}", 1)[0] in self.prefixes

    def attribute(self, node: list[Any], name: str, element: Any) -> tuple[str, bool]:
        """(field name, is a date field) of attribute ``name`` of an element at ``node``."""
        key = _join(node[0], self.local(name, element))
        entry = (key, is_date_field(key))
        if self._cacheable(name):
            node[2][name] = entry
        return entry

    def child(self, node: list[Any], tag: str, element: Any) -> list[Any]:
        """The node of child ``tag`` of an element at ``node``."""
        key = _join(node[0], self.local(tag, element))
        child = [key, is_date_field(key), {}, {}]
        if self._cacheable(tag):
            node[3][tag] = child
        return child


def _join(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def _add(out: dict[str, Any], key: str, value: str) -> None:
    """First value as a string; a repeated field becomes a list in document order."""
    current = out.get(key)
    if current is None:
        out[key] = value
    elif current.__class__ is list:
        current.append(value)
    else:
        out[key] = [current, value]


def _walk(element: Any, node: list[Any], out: dict[str, Any], naming: _Naming) -> None:
    """Attributes, then the element's own text, then its children, recursively.

    This is the hot loop of the stage: ``_add`` is inlined and names come from ``node``.
    """
    prefix, text_is_date, attributes, children = node
    items = element.items()
    if items:
        for name, value in items:
            entry = attributes.get(name)
            if entry is None:
                entry = naming.attribute(node, name, element)
            key, is_date = entry
            value = value.strip()
            if is_date:
                value = normalise_date(value)
                if value is None:
                    continue
            current = out.get(key)
            if current is None:
                out[key] = value
            elif current.__class__ is list:
                current.append(value)
            else:
                out[key] = [current, value]
    if text_is_date is not None:
        text = element.text
        if text is not None:
            text = text.strip()
            if text and (not text_is_date or (text := normalise_date(text)) is not None):
                current = out.get(prefix)
                if current is None:
                    out[prefix] = text
                elif current.__class__ is list:
                    current.append(text)
                else:
                    out[prefix] = [current, text]
    if len(element):
        for child in element:
            tag = child.tag
            child_node = children.get(tag)
            if child_node is None:
                if tag.__class__ is not str:
                    continue  # the parser removes comments and PIs; be safe anyway
                child_node = naming.child(node, tag, child)
            _walk(child, child_node, out, naming)


def _flatten_activity(activity: Any, dataset_fields: dict[str, str], naming: _Naming) -> dict[str, Any]:
    """One ``iati-activity`` element as a flat dict (see the module docstring for the rules).

    :param dataset_fields: the ``dataset_*`` fields of the file, copied first.
    :param naming: name caches for the activity's in-scope namespace map.
    """
    out: dict[str, Any] = dict(dataset_fields)
    top = naming.activity
    exploded: dict[str, list[dict[str, Any]]] = {}
    identifier_done = False
    # The activity's own attributes have no prefix; its own text is ignored.
    for name, value in activity.items():
        key, is_date = top[2].get(name) or naming.attribute(top, name, activity)
        value = value.strip()
        if not is_date or (value := normalise_date(value)) is not None:
            _add(out, key, value)
    for child in activity:
        tag = child.tag
        if tag == IATI_IDENTIFIER:
            if not identifier_done:
                # The identifier rule shared with lakify and indexing: the first
                # iati-identifier, normalised, so the field is always single-valued.
                identifier_done = True
                identifier = identifier_of(activity)
                if identifier:
                    _add(out, naming.identifier[0], identifier)
            _walk(child, naming.identifier, out, naming)
            continue
        node = top[3].get(tag)
        if node is None:
            if tag.__class__ is not str:
                continue
            node = naming.child(top, tag, child)
        if tag in EXPLODE_ELEMENTS:
            item: dict[str, Any] = {}
            _walk(child, node, item, naming)
            exploded.setdefault(f"@{tag}", []).append(item)
            # The activity keeps the aggregated fields too, in document order.
            for key, value in item.items():
                if value.__class__ is list:
                    for v in value:
                        _add(out, key, v)
                else:
                    _add(out, key, value)
        else:
            _walk(child, node, out, naming)
    out.update(exploded)
    return out


def _compiled_flatten_activity(activity: Any, dataset_fields: dict[str, str], naming: _Naming) -> dict[str, Any]:
    assert compiled is not None
    return compiled.flatten_activity(activity, dataset_fields, naming, normalise_date, identifier_of)  # type: ignore[no-any-return]


#: the activity flattener: the compiled one when built (same output, tests/unit/test_compiled.py)
FLATTEN_ACTIVITY = _compiled_flatten_activity if compiled is not None else _flatten_activity


def _dataset_fields(root_attrib: Any) -> dict[str, str]:
    fields = {"dataset_version": root_attrib.get("version", "").strip()}
    generated = root_attrib.get("generated-datetime")
    if generated is not None:
        value = normalise_date(generated.strip())
        if value is not None:
            fields["dataset_generated_datetime"] = value
    linked = root_attrib.get("linked-data-default")
    if linked is not None:
        fields["dataset_linked_data_default"] = linked.strip()
    return fields


class _ActivityStream:
    """Streams the activities of one parsed view; counts recovered parser errors."""

    def __init__(self, path: str):
        self.path = path
        self.recovered_errors = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        context = safe_iterparse(
            self.path,
            events=("start", "end"),
            tag=(IATI_ACTIVITIES, IATI_ACTIVITY),
            recover=True,  # the reference tolerated e.g. a broken trailing tag
            remove_comments=True,  # text split by a comment joins up, as in the reference
            remove_pis=True,
            # Whitespace-only text between elements never becomes a field; not building
            # those text nodes saves time and memory (non-blank text is always kept).
            remove_blank_text=True,
        )
        root = None
        namings: dict[tuple[tuple[str | None, str], ...], _Naming] = {}
        events = iter(context)
        try:
            root = activities_root(events)
            dataset = _dataset_fields(root.attrib) if root is not None else {}
            for element in iter_root_activities(events, root):
                nsmap = element.nsmap
                key = tuple(nsmap.items())
                naming = namings.get(key)
                if naming is None:
                    if len(namings) >= _MAX_NAMINGS:
                        namings.clear()
                    naming = namings[key] = _Naming(nsmap)
                yield FLATTEN_ACTIVITY(element, dataset, naming)
        finally:
            self.recovered_errors = count_recovered_errors(context.error_log)
        if root is None:
            raise NotIatiError("Non-IATI XML: no iati-activities root element")


def count_recovered_errors(error_log: Any) -> int:
    """Errors (not warnings) in a recovering parser's error log."""
    return sum(1 for entry in error_log if entry.level >= etree.ErrorLevels.ERROR)


def iter_flat_activities(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each activity of an IATI activities file as a flat dict, in document order.

    The file is decoded from its real encoding and must pass
    :func:`~iati_refresher.iati.xml.check_prolog`.

    :raises NotIatiError: the root element is not ``iati-activities``.
    :raises XmlRefused: the file declares a DOCTYPE or entities.
    :raises lxml.etree.XMLSyntaxError: the file is not XML at all (e.g. empty).
    """
    yield from _stream(path, None)


def _stream(path: str | os.PathLike[str], stats: list[_ActivityStream] | None) -> Iterator[dict[str, Any]]:
    info = sniff_encoding(path)
    check_prolog(path, info.encoding)
    with utf8_view(path, info) as view:
        stream = _ActivityStream(view)
        if stats is not None:
            stats.append(stream)
        yield from stream


def flatten_file(path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> FlattenResult:
    """Write one JSON line per activity of ``path`` to ``out_path``.

    :raises NotIatiError, XmlRefused, lxml.etree.XMLSyntaxError: as :func:`iter_flat_activities`.
    """
    stats: list[_ActivityStream] = []
    count = 0
    # Compact JSON (msgspec: several times json's speed); only the index stage reads it.
    encode = msgspec.json.Encoder().encode
    with open(out_path, "wb") as out:
        write = out.write
        for activity in _stream(path, stats):
            write(encode(activity))
            write(b"\n")
            count += 1
        size = out.tell()
    return FlattenResult(count, size, stats[0].recovered_errors if stats else 0)


def flat_blob_name(document_id: str, hash_: str) -> str:
    """``{document_id}/{hash}.jsonl`` in the flat container."""
    return f"{document_id}/{hash_}.jsonl"


def flatten_document(doc: dict[str, Any], blobs: BlobStore, settings: Settings) -> Outcome:
    """Flatten ``clean/{hash}.xml`` of one document into ``flat/{id}/{hash}.jsonl``.

    Older ``flat/{id}/*.jsonl`` blobs are deleted once the new one is stored.

    :return: ``ok`` with ``activities`` and the ``manifest`` to record; ``skipped``
        (``not_iati``, ``doctype_refused``); ``failed`` (``clean_missing``, ``parse_error``:
        not retryable; ``storage_error``: retryable).
    """
    doc_id, hash_ = str(doc["id"]), str(doc["hash"])
    blob_name = flat_blob_name(doc_id, hash_)
    with tempfile.TemporaryDirectory(prefix="flatten-") as tmp:
        source = os.path.join(tmp, "clean.xml")
        target = os.path.join(tmp, "flat.jsonl")
        try:
            blobs.get_to_file(settings.clean_container, f"{hash_}.xml", source)
        except BlobNotFound:
            return Outcome.failed(doc_id, "clean_missing", f"clean/{hash_}.xml does not exist", retryable=False)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not read the clean file: {exc}", retryable=True)
        try:
            result = flatten_file(source, target)
        except NotIatiError as exc:
            return Outcome.skipped(doc_id, "not_iati", str(exc))
        except XmlRefused as exc:
            return Outcome.skipped(doc_id, exc.code, str(exc))
        except etree.XMLSyntaxError as exc:
            return Outcome.failed(doc_id, "parse_error", f"Could not parse: {exc}", retryable=False)
        try:
            blobs.put_file(settings.flat_container, blob_name, target)
            stale = [
                name
                for name in blobs.list(settings.flat_container, f"{doc_id}/")
                if name != blob_name and name.endswith(".jsonl")
            ]
            if stale:
                blobs.delete(settings.flat_container, stale)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not store the flat file: {exc}", retryable=True)
    manifest = {
        "format": "jsonl",
        "container": settings.flat_container,
        "blob": blob_name,
        "activities": result.activities,
        "bytes": result.bytes,
    }
    data: dict[str, Any] = {"activities": result.activities, "manifest": manifest}
    if result.recovered_errors:
        data["recovered_errors"] = result.recovered_errors
    return Outcome.ok(doc_id, **data)


def describe_input_error(exc: BaseException, path: str | os.PathLike[str]) -> str | None:
    """A one-line explanation of an expected problem with an input file (for the CLI).

    :return: the message, or ``None`` when ``exc`` is not an expected input problem.
    """
    if isinstance(exc, NotIatiError):
        return f"{path}: not an IATI activities file ({exc})"
    if isinstance(exc, XmlRefused):
        return f"{path}: refused ({exc.code}): {exc}"
    if isinstance(exc, etree.XMLSyntaxError):
        return f"{path}: not well-formed XML: {exc}"
    if isinstance(exc, OSError):
        return f"{path}: cannot read or write: {exc.strerror or exc}"
    return None


def cli_flatten(path: str, out: TextIO, err: TextIO) -> int:
    """``refresher flatten FILE``: one JSON line per activity on ``out``.

    :return: the exit status: 0, or 1 after writing a clear message to ``err``.
    """
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    try:
        for activity in iter_flat_activities(path):
            out.write(dumps(activity))
            out.write("\n")
    except (NotIatiError, XmlRefused, etree.XMLSyntaxError, OSError) as exc:
        err.write(f"{describe_input_error(exc, path)}\n")
        return 1
    out.flush()
    return 0
