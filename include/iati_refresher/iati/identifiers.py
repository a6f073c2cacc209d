"""One identifier rule shared by flatten, lakify and indexing.

The reference hashed identifiers differently in flatten (comments dropped, ``\\r`` and
``\\n`` removed) and lakify (first text node, only ``\\n`` removed), so identifiers with a
comment or a carriage return never matched their lake blob and looped forever.  Here:

* the identifier is the text of the activity's first ``iati-identifier`` element with
  comments and processing instructions ignored (their neighbouring text joins up),
* stripped of surrounding whitespace, with every ``\\r`` and ``\\n`` removed;
* ``identifier_hash`` is the SHA-1 hex of its UTF-8 bytes (as the reference names lake blobs).
"""

from __future__ import annotations

import hashlib
from typing import Any


def normalise_identifier(text: str | None) -> str:
    if text is None:
        return ""
    return text.strip().replace("\r", "").replace("\n", "")


def identifier_of(activity: Any) -> str:
    """The normalised identifier of an ``iati-activity`` element ('' when absent or empty)."""
    for child in activity:
        if child.tag == "iati-identifier":
            parts = [piece for node in child.iter() for piece in _own_texts(node, child)]
            return normalise_identifier("".join(parts))
    return ""


def _own_texts(node: Any, top: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node.tag, str) and node.text:
        out.append(node.text)
    if node is not top and node.tail:
        out.append(node.tail)
    return out


def identifier_hash(identifier: str) -> str:
    return hashlib.sha1(identifier.encode("utf-8")).hexdigest()


def lake_name(document_id: str, identifier: str, occurrence: int, extension: str) -> str:
    """The lake blob of the ``occurrence``-th (0-based) activity with ``identifier`` in a document.

    The first keeps the reference's name ``{document_id}/{sha1}.{ext}``; later duplicates
    inside the same document get ``{document_id}/{sha1}--{n}.{ext}`` instead of silently
    overwriting the first (the reference's last-one-wins).  The Solr activity id uses the
    same ``n``: ``{document_id}--{sha1}--{n}``.
    """
    base = f"{document_id}/{identifier_hash(identifier)}"
    return f"{base}.{extension}" if occurrence == 0 else f"{base}--{occurrence}.{extension}"


def solr_activity_id(document_id: str, identifier: str, occurrence: int) -> str:
    return f"{document_id}--{identifier_hash(identifier)}--{occurrence}"
