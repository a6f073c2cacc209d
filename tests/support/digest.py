"""Digests of what the pipeline leaves behind, to compare two runs.

A fault-injected run followed by a recovery run must end exactly where a fault-free run
ends.  "Exactly" means: the database rows that matter, every blob and every Solr document
are equal, except for what is different by nature between two runs:

* timestamps become "set" / "not set" (``True`` / ``None``), run ids are dropped;
* serial ids are dropped (``document.validation`` becomes the content of the report it
  points at, ``validation`` rows are compared as a multiset);
* names that differ between two test worlds (container names, the registry's base URL)
  are replaced by placeholders given by the caller;
* Solr's ``indexed_datetime`` and ``_version_`` are dropped.

A :class:`Digest` maps ``part → key → sha1`` so a failed comparison says which row, blob
or Solr document differs (:meth:`Digest.diff`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

# document_stage columns that differ between two runs by nature (timestamps aside).
RUN_SPECIFIC = {"run_id", "id", "first_attempt_at", "last_attempt_at", "next_attempt_at"}
SOLR_VOLATILE = ("indexed_datetime", "_version_")


@dataclass(frozen=True)
class Digest:
    """``parts[part][key]`` is the SHA-1 of one normalised row, blob or Solr document."""

    parts: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def sha1(self) -> str:
        return _sha1(_canonical(self.parts))

    def diff(self, other: Digest, limit: int = 40) -> list[str]:
        """Human-readable differences (``self`` is "got", ``other`` is "expected")."""
        out: list[str] = []
        for part in sorted(set(self.parts) | set(other.parts)):
            mine, theirs = self.parts.get(part, {}), other.parts.get(part, {})
            for key in sorted(set(mine) | set(theirs)):
                if key not in theirs:
                    out.append(f"{part}: unexpected {key}")
                elif key not in mine:
                    out.append(f"{part}: missing {key}")
                elif mine[key] != theirs[key]:
                    out.append(f"{part}: differs {key}")
        return out[:limit]

    def __add__(self, other: Digest) -> Digest:
        return Digest({**self.parts, **other.parts})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=_plain, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return _sha1(bytes(value))
    raise TypeError(f"cannot digest {type(value).__name__}")


def _sha1(text: str | bytes) -> str:
    return hashlib.sha1(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def _normalise(row: Mapping[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    dropped = set(drop)
    return {k: (True if isinstance(v, datetime | date) else v) for k, v in row.items() if k not in dropped}


def _replace(text: str, replacements: Mapping[str, str]) -> str:
    # Longest first, so a name that contains another is replaced whole.
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


def _hashed(value: Any, replacements: Mapping[str, str]) -> str:
    return _sha1(_replace(_canonical(value), replacements))


# --- database ---------------------------------------------------------------------------------


def database_digest(conninfo: str, replacements: Mapping[str, str] | None = None) -> Digest:
    """The refresher database's publishers, documents, stage records and validation reports."""
    rep = dict(replacements or {})
    parts: dict[str, dict[str, str]] = {}
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        publishers = conn.execute("SELECT * FROM publisher ORDER BY org_id").fetchall()
        parts["publisher"] = {r["org_id"]: _hashed(_normalise(r), rep) for r in publishers}
        documents = conn.execute(
            """SELECT d.*, v.valid AS points_at_valid, v.report AS points_at_report,
                      v.document_hash AS points_at_hash
                 FROM document d LEFT JOIN validation v ON v.id = d.validation ORDER BY d.id"""
        ).fetchall()
        parts["document"] = {r["id"]: _hashed(_normalise(r, drop=("validation",)), rep) for r in documents}
        stages = conn.execute("SELECT * FROM document_stage ORDER BY document_id, stage").fetchall()
        parts["document_stage"] = {
            f"{r['document_id']}/{r['stage']}": _hashed(_normalise(r, drop=RUN_SPECIFIC), rep) for r in stages
        }
        reports = conn.execute(
            "SELECT document_id, document_hash, document_url, valid, report, publisher, publisher_name FROM validation"
        ).fetchall()
        hashed = sorted((f"{r['document_id']}/{r['document_hash']}", _hashed(_normalise(r), rep)) for r in reports)
        counted: dict[str, str] = {}
        seen: dict[str, int] = {}
        for key, value in hashed:  # the same document and hash may have several reports
            seen[key] = seen.get(key, 0) + 1
            counted[f"{key}#{seen[key] - 1}"] = value
        parts["validation"] = counted
    return Digest(parts)


def unexpired_claims(conninfo: str) -> list[str]:
    """Documents still leased to a worker (none once every run has finished)."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT document_id FROM document_claim WHERE expires_at > (now() AT TIME ZONE 'UTC') ORDER BY 1"
        ).fetchall()
    return [r["document_id"] for r in rows]


# --- blob storage -----------------------------------------------------------------------------


def blob_digest(store: Any, containers: Mapping[str, str]) -> Digest:
    """``role → {blob name: sha1 of its bytes}`` for each ``role → container name``.

    :param store: an :class:`iati_refresher.storage.BlobStore`.
    """
    parts: dict[str, dict[str, str]] = {}
    for role, container in sorted(containers.items()):
        parts[f"blob:{role}"] = {
            name: _sha1(store.get_bytes(container, name)) for name in sorted(store.list(container))
        }
    return Digest(parts)


# --- Solr -------------------------------------------------------------------------------------


def solr_digest(
    base_url: str,
    collections: Iterable[str],
    *,
    auth: tuple[str, str] | None = None,
    replacements: Mapping[str, str] | None = None,
    page_size: int = 500,
) -> Digest:
    """Every document of each collection (cursor paging), minus ``indexed_datetime`` and ``_version_``."""
    rep = dict(replacements or {})
    parts: dict[str, dict[str, str]] = {}
    with httpx.Client(auth=auth, timeout=60) as http:
        for collection in collections:
            docs: dict[str, str] = {}
            cursor = "*"
            while True:
                response = http.post(
                    f"{base_url.rstrip('/')}/{collection}/select",
                    data={"q": "*:*", "sort": "id asc", "rows": page_size, "cursorMark": cursor, "wt": "json"},
                )
                response.raise_for_status()
                answer = response.json()
                for doc in answer["response"]["docs"]:
                    docs[doc["id"]] = _hashed({k: v for k, v in doc.items() if k not in SOLR_VOLATILE}, rep)
                following = answer.get("nextCursorMark")
                if not following or following == cursor:
                    break
                cursor = following
            parts[f"solr:{collection}"] = docs
    return Digest(parts)
