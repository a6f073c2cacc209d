"""Clean: only schema-valid activities of IATI 2.x activity files go further.

Rules (reference facts §2.6, §8 item 6):

* organisation files, 1.x files and files that are not IATI are excluded;
* a schema-valid file is copied byte for byte;
* a schema-invalid file keeps exactly the activities whose 0-based position the
  Validator's meta list (``report["iati-activities"]``) marks ``valid: true``, in document
  order, provided the meta entry at that position names the same activity: the Validator
  splits files by text, so a commented-out ``<iati-activity>`` gets a meta entry and shifts
  every index after it.  Each entry's identifier is checked against the activity's (the
  Validator writes ``X(2)`` for a second ``X`` and ``noIdentifier`` for none), and so is the
  number of entries; on any disagreement nothing is kept (skipped ``meta_conflict``, with the
  first disagreement in the message) rather than a guess at which activities were valid.
  The kept activities go under a new ``iati-activities`` root carrying all the original
  root attributes and namespace declarations.  Comments, processing instructions and text between
  activities are dropped.  The result is UTF-8 with an XML declaration saying so (the
  reference wrote no declaration; both mean UTF-8, the declaration makes it explicit).
  A file left with no valid activity is excluded (``No valid activities``).

The reduction streams the file: memory is bounded by the largest single activity.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NoReturn, TextIO

from lxml import etree

from iati_refresher.iati.encoding import sniff_encoding, utf8_view
from iati_refresher.iati.identifiers import identifier_of, normalise_identifier
from iati_refresher.iati.xml import (
    IATI_ACTIVITIES,
    IATI_ACTIVITY,
    IATI_ORGANISATIONS,
    NotIatiError,
    XmlRefused,
    activities_root,
    check_prolog,
    iter_root_activities,
    safe_iterparse,
)
from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.stages.flatten import describe_input_error
from iati_refresher.storage import BlobNotFound, BlobStorageError, BlobStore

NO_VALID_ACTIVITIES = "No valid activities"  # what the reference stored in clean_error
NO_IDENTIFIER = "noIdentifier"  # the Validator's meta name for an activity without identifier
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class CleanDecision(NamedTuple):
    """What to do with a document, from its validation report.

    :param action: ``copy`` (valid file), ``reduce`` (keep the valid activities) or ``skip``.
    :param code: the skip reason (``organisation_file``, ``version_1x``, ``not_iati``,
        ``no_valid_activities``), ``None`` unless skipping.
    :param message: a human explanation, ``None`` unless skipping.
    """

    action: Literal["copy", "reduce", "skip"]
    code: str | None = None
    message: str | None = None


class CleanSkipped(Exception):
    """The document is excluded by a clean rule (``code`` says which)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_file` wrote.

    :param mode: ``copied`` (bytes unchanged) or ``reduced`` (valid activities only).
    :param activities_total: activities in the source; ``None`` when copied (not parsed).
    :param activities_kept: activities written; ``None`` when copied.
    """

    mode: Literal["copied", "reduced"]
    activities_total: int | None
    activities_kept: int | None


def decide_clean(report: dict[str, Any] | None) -> CleanDecision:
    """The clean decision for a validation report (no file access).

    :param report: the Validator's report as stored (``None`` when there is none).
    """
    if not isinstance(report, dict) or not isinstance(report.get("valid"), bool):
        return CleanDecision("skip", "not_iati", "There is no validation report for this file")
    file_type = report.get("fileType") or ""
    if file_type == IATI_ORGANISATIONS:
        return CleanDecision("skip", "organisation_file", "Organisation files are not added to the Datastore")
    if file_type != IATI_ACTIVITIES:
        return CleanDecision("skip", "not_iati", "The Validator did not recognise an IATI activities file")
    version = str(report.get("iatiVersion") or "").strip()
    if version.startswith("1"):
        return CleanDecision("skip", "version_1x", f"IATI version {version} files are not added to the Datastore")
    if report["valid"]:
        return CleanDecision("copy")
    if not version.startswith("2"):
        return CleanDecision("skip", "not_iati", f"Unsupported IATI version {version or '(none)'}")
    if not valid_activity_indexes(report):
        return CleanDecision("skip", "no_valid_activities", NO_VALID_ACTIVITIES)
    return CleanDecision("reduce")


class ActivityMeta:
    """The Validator's per-activity meta, checked against the file's activities in order."""

    def __init__(self, report: dict[str, Any]):
        self.entries: dict[int, dict[str, Any]] = {}
        self.count = 0
        for entry in report.get(IATI_ACTIVITIES) or []:
            if not isinstance(entry, dict):
                continue
            index = entry.get("index")
            if isinstance(index, int) and not isinstance(index, bool):
                self.entries[index] = entry
                self.count += 1
        self.seen: dict[str, int] = {}

    def keep(self, position: int, activity: Any) -> bool:
        """Whether the activity at ``position`` is valid; :class:`CleanSkipped` on a conflict."""
        identifier = identifier_of(activity)
        occurrence = self.seen[identifier] = self.seen.get(identifier, 0) + 1
        expected = identifier or NO_IDENTIFIER
        if occurrence > 1:
            expected = f"{expected}({occurrence})"
        entry = self.entries.get(position)
        if entry is None:
            self._conflict(f"there is no meta entry for activity {position} ({expected!r})")
        named = entry.get("identifier")
        named = normalise_identifier(named) if isinstance(named, str) else None
        if named != expected:
            self._conflict(
                f"meta entry {position} names {named!r} where the file's activity {position} is {expected!r}"
            )
        return entry.get("valid") is True

    def finish(self, activities: int) -> None:
        if self.count != activities:
            self._conflict(f"the meta lists {self.count} activities, the file has {activities}")

    def _conflict(self, detail: str) -> NoReturn:
        raise CleanSkipped(
            "meta_conflict",
            f"The Validator's per-activity results do not match the file's activities: {detail}. "
            "Nothing was kept rather than a guess at which activities are valid "
            "(a commented-out <iati-activity> in the file is one way this happens).",
        )


def valid_activity_indexes(report: dict[str, Any]) -> set[int]:
    """0-based positions of the activities the Validator's meta list marks ``valid: true``."""
    indexes: set[int] = set()
    for entry in report.get(IATI_ACTIVITIES) or []:
        if not isinstance(entry, dict) or entry.get("valid") is not True:
            continue
        index = entry.get("index")
        if isinstance(index, bool) or index is None:
            continue
        try:
            indexes.add(int(index))
        except (TypeError, ValueError):
            continue
    return indexes


def clean_file(
    src_path: str | os.PathLike[str], report: dict[str, Any] | None, dst_path: str | os.PathLike[str]
) -> CleanResult:
    """Write the clean version of ``src_path`` to ``dst_path`` following ``report``.

    :raises CleanSkipped: a rule excludes the file (``dst_path`` is not written).
    :raises XmlRefused: the file declares a DOCTYPE or entities.
    :raises lxml.etree.XMLSyntaxError: the file (being reduced) is not well-formed XML.
    """
    decision = decide_clean(report)
    if decision.action == "skip":
        raise CleanSkipped(decision.code or "skipped", decision.message or "")
    info = sniff_encoding(src_path)
    check_prolog(src_path, info.encoding)
    if decision.action == "copy":
        shutil.copyfile(src_path, dst_path)
        return CleanResult("copied", None, None)
    assert report is not None  # decide_clean skips a missing report
    try:
        with utf8_view(src_path, info) as view:
            total, kept = _reduce(view, ActivityMeta(report), dst_path)
    except BaseException:
        _remove(dst_path)
        raise
    if kept == 0:
        _remove(dst_path)
        raise CleanSkipped("no_valid_activities", NO_VALID_ACTIVITIES)
    return CleanResult("reduced", total, kept)


def _remove(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _reduce(path: str, meta: ActivityMeta, dst_path: str | os.PathLike[str]) -> tuple[int, int]:
    """Stream ``path`` and write the kept activities; returns (activities seen, kept)."""
    # No recovery: a file that is not well-formed is refused, as in the reference.
    events = iter(safe_iterparse(path, events=("start", "end"), tag=(IATI_ACTIVITIES, IATI_ACTIVITY)))
    try:
        root = activities_root(events)
    except NotIatiError as exc:
        raise CleanSkipped("not_iati", "The root element is not iati-activities") from exc
    if root is None:
        raise CleanSkipped("not_iati", "The file has no iati-activities root element")
    total = kept = 0
    with open(dst_path, "wb") as out:
        out.write(XML_DECLARATION)
        with (
            etree.xmlfile(out, encoding="utf-8") as xf,
            xf.element(IATI_ACTIVITIES, dict(root.attrib), nsmap=dict(root.nsmap)),
        ):
            xf.write("\n")
            for element in iter_root_activities(events, root):
                if meta.keep(total, element):
                    xf.write(element, with_tail=False)
                    xf.write("\n")
                    kept += 1
                total += 1
    meta.finish(total)
    return total, kept


def clean_document(doc: dict[str, Any], report: dict[str, Any] | None, blobs: BlobStore, settings: Settings) -> Outcome:
    """Clean one document: ``source/{hash}.xml`` → ``clean/{hash}.xml``.

    :return: ``ok`` with ``mode``, ``activities_total`` and ``activities_kept``;
        ``skipped`` (``organisation_file``, ``version_1x``, ``no_valid_activities``,
        ``not_iati``, ``doctype_refused``, ``meta_conflict``); ``failed`` (``source_missing`` and
        ``parse_error``: not retryable; ``storage_error``: retryable).
    """
    doc_id, hash_ = str(doc["id"]), str(doc["hash"])
    decision = decide_clean(report)
    if decision.action == "skip":
        return Outcome.skipped(doc_id, decision.code or "skipped", decision.message or "")
    with tempfile.TemporaryDirectory(prefix="clean-") as tmp:
        source = os.path.join(tmp, "source.xml")
        target = os.path.join(tmp, "clean.xml")
        try:
            blobs.get_to_file(settings.source_container, f"{hash_}.xml", source)
        except BlobNotFound:
            return Outcome.failed(doc_id, "source_missing", f"source/{hash_}.xml does not exist", retryable=False)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not read the source file: {exc}", retryable=True)
        try:
            result = clean_file(source, report, target)
        except CleanSkipped as exc:
            return Outcome.skipped(doc_id, exc.code, exc.message)
        except XmlRefused as exc:
            return Outcome.skipped(doc_id, exc.code, str(exc))
        except etree.XMLSyntaxError as exc:
            return Outcome.failed(doc_id, "parse_error", f"Could not parse: {exc}", retryable=False)
        try:
            blobs.put_file(settings.clean_container, f"{hash_}.xml", target)
        except BlobStorageError as exc:
            return Outcome.failed(doc_id, "storage_error", f"could not store the clean file: {exc}", retryable=True)
    return Outcome.ok(
        doc_id, mode=result.mode, activities_total=result.activities_total, activities_kept=result.activities_kept
    )


def cli_clean(path: str, report_path: str, out_path: str, err: TextIO) -> int:
    """``refresher clean FILE REPORT.json OUTFILE``: write the clean version of FILE.

    :return: 0 when OUTFILE was written, 2 when a rule excludes the file (nothing
        written), 1 on bad input; messages go to ``err``.
    """
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as exc:
        err.write(f"{report_path}: cannot read: {exc.strerror or exc}\n")
        return 1
    except json.JSONDecodeError as exc:
        err.write(f"{report_path}: not a JSON validation report: {exc}\n")
        return 1
    try:
        result = clean_file(path, report, out_path)
    except CleanSkipped as exc:
        err.write(f"{path}: not cleaned ({exc.code}): {exc.message}\n")
        return 2
    except (XmlRefused, etree.XMLSyntaxError, OSError) as exc:
        err.write(f"{describe_input_error(exc, path)}\n")
        return 1
    if result.mode == "copied":
        err.write(f"{path}: valid, copied unchanged to {out_path}\n")
    else:
        err.write(f"{path}: kept {result.activities_kept} of {result.activities_total} activities in {out_path}\n")
    return 0
