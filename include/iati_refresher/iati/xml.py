"""Safe XML parsing for files written by hundreds of publishers.

Every parser in the package comes from here.  The settings make hostile input harmless:
no entity substitution (no billion laughs, no external entities), no DTD loading, no
network access.  IATI files never need a DTD, so a document that declares one is refused
outright (:func:`check_prolog`) and gets a recorded, explained state instead of being
parsed with silently missing text.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from typing import Any

from lxml import etree

PROLOG_SCAN_BYTES = 1024 * 1024
IATI_ACTIVITIES = "iati-activities"
IATI_ACTIVITY = "iati-activity"
IATI_ORGANISATIONS = "iati-organisations"


class XmlRefused(ValueError):
    """The file is not something we will parse (DOCTYPE, binary, not XML...).

    ``code`` is a short machine reason recorded per document.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": True,  # long text nodes and deep trees are legal IATI; memory is bounded by streaming
}


def safe_parser(**overrides: Any) -> etree.XMLParser:
    return etree.XMLParser(**{**PARSER_OPTIONS, **overrides})


def safe_iterparse(source: str | os.PathLike[str] | Any, **kwargs: Any) -> etree.iterparse:
    """``lxml.etree.iterparse`` with the safe options (callers add events/tag/recover)."""
    return etree.iterparse(source, **{**PARSER_OPTIONS, **kwargs})


class NotIatiError(ValueError):
    """The file's root element is not ``iati-activities`` (without a namespace)."""


def activities_root(events: Iterator[tuple[str, Any]]) -> Any | None:
    """The ``iati-activities`` root, from the first iterparse event; ``None`` without events.

    :raises NotIatiError: the first element read is something else.
    """
    first = next(events, None)
    if first is None:
        return None
    event, element = first
    if event != "start" or element.tag != IATI_ACTIVITIES or element.getparent() is not None:
        raise NotIatiError("Non-IATI XML: the root element is not iati-activities")
    return element


def iter_root_activities(events: Iterator[tuple[str, Any]], root: Any | None) -> Iterator[Any]:
    """The activities among iterparse ``("start", "end")`` events read after ``root``'s start
    (none when there is no root, as :func:`activities_root` says of an empty stream).

    Only direct children of the root are activities (the Validator counts them so).  Once
    the caller asks for the next one, the previous activity and everything before it are
    freed, so memory is bounded by the largest activity.
    """
    if root is None:
        return
    for event, element in events:
        if event != "end" or element.tag != IATI_ACTIVITY:
            continue
        if element.getparent() is not root:
            # Not a child of the root, so not an activity: free it unless it is
            # part of an enclosing activity that is still being read.
            if next(element.iterancestors(IATI_ACTIVITY), None) is None:
                element.clear(keep_tail=False)
            continue
        yield element
        element.clear(keep_tail=False)
        while element.getprevious() is not None:
            del root[0]


_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
# (UTF-32 first: its little-endian mark starts with UTF-16's)
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)


def check_prolog(path: str | os.PathLike[str], encoding: str | None = None) -> None:
    """Refuse files whose prolog declares a DOCTYPE or entities.

    The prolog is everything before the root element; it is scanned in the file's own
    encoding (UTF-16 files are decoded first) up to ``PROLOG_SCAN_BYTES``.  Without
    ``encoding``, a UTF-16 or UTF-32 byte-order mark says it (no need to sniff the whole file).
    """
    with open(path, "rb") as f:
        head = f.read(PROLOG_SCAN_BYTES)
    if encoding is None:
        encoding = next((codec for mark, codec in _WIDE_BOMS if head.startswith(mark)), None)
    if encoding and encoding.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
        head = head.decode(encoding, errors="replace").encode("utf-8")
    prolog = _prolog(head)
    if _DOCTYPE.search(prolog) or _ENTITY.search(prolog):
        raise XmlRefused(
            "doctype_refused",
            "the file declares a DOCTYPE or entities; IATI XML never needs them, so it is not parsed",
        )


def _prolog(head: bytes) -> bytes:
    """Bytes before the first start tag of an element (skipping <?...?> and <!-- -->)."""
    i = 0
    n = len(head)
    while i < n:
        j = head.find(b"<", i)
        if j < 0 or j + 1 >= n:
            return head
        nxt = head[j + 1 : j + 2]
        if nxt == b"?":
            end = head.find(b"?>", j)
            i = n if end < 0 else end + 2
        elif head.startswith(b"<!--", j):
            end = head.find(b"-->", j)
            i = n if end < 0 else end + 3
        elif nxt == b"!":
            # DOCTYPE (possibly with an internal subset): it is part of the prolog
            end = head.find(b"]>", j)
            end2 = head.find(b">", j)
            i = n if end2 < 0 else (end + 2 if (end >= 0 and head.find(b"[", j, end2) >= 0) else end2 + 1)
        else:
            return head[:j]
    return head


def local_name(tag: Any) -> str:
    """The local part of an lxml tag (``{ns}name`` → ``name``); '' for comments/PIs."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def root_info(path: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """(root tag, root attributes) read from the first start event, without loading the file."""
    for _event, element in safe_iterparse(str(path), events=("start",)):
        return element.tag if isinstance(element.tag, str) else "", dict(element.attrib)
    return "", {}


def iter_children(path: str | os.PathLike[str], tag: str, **kwargs: Any) -> Iterator[etree._Element]:
    """Yield each direct child ``tag`` of the root in document order, freeing it afterwards.

    Memory stays bounded by the largest single child: processed elements and their
    preceding siblings are cleared from the partial tree.
    """
    depth = 0
    for event, element in safe_iterparse(str(path), events=("start", "end"), **kwargs):
        if event == "start":
            depth += 1
            continue
        depth -= 1
        if depth == 1 and element.tag == tag:
            yield element
            element.clear(keep_tail=False)
            parent = element.getparent()
            if parent is not None:
                while element.getprevious() is not None:
                    del parent[0]
