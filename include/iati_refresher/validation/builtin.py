"""The built-in IATI schema validator: XSD checks in the IATI Validator API's report shape.

It stands in for the IATI Validator API (js-validator-api) when none is configured, and
backs the Validator stand-in used by the tests.  It checks the XML schema only (no
rulesets, no codelists), so its reports carry the API's structure and error ids for the
checks it does: ``0.1.1`` unparseable, ``0.2.1`` not IATI, ``0.6.1`` unsupported version,
``0.3.1`` schema errors (critical, category ``schema``), ``1.1.2`` duplicate identifiers.

Memory stays bounded by the largest single activity whatever the file size: the file is
streamed, each ``iati-activity`` (or ``iati-organisation``) is validated on its own against
the global element declaration of the schema as soon as it is complete, then freed.  The
root element's attributes are validated on an empty copy of the root, and the root's own
content model (at least one child, foreign elements last, no stray text) is checked by
hand.  Root-level problems are therefore reported once under ``file`` instead of once per
activity, and an activity's meta ``valid`` means "no schema error inside this activity".

Hostile input never reaches the network or the file system: DOCTYPEs are refused before
parsing, parsers come from :mod:`iati_refresher.iati.xml`, and schema imports may only
resolve to files inside the schema directory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from iati_refresher import __version__
from iati_refresher.iati.encoding import sniff_encoding, utf8_view
from iati_refresher.iati.identifiers import identifier_of, normalise_identifier
from iati_refresher.iati.xml import XmlRefused, check_prolog, local_name, safe_iterparse, safe_parser

SUPPORTED_VERSIONS = ("2.01", "2.02", "2.03")
API_VERSION = f"iati-refresher-builtin-xsd/{__version__}"
FILE_IDENTIFIER = "file"
FILE_TITLE = "File level errors"
NO_IDENTIFIER = "noIdentifier"
# A pathological activity can repeat one schema error thousands of times; the report keeps
# the first occurrences of each message (the counts in ``summary`` are per message, as the API's).
MAX_CONTEXTS_PER_ERROR = 500
# Every report says what it did not check, where validator-web shows it (a file-level
# advisory) and for programs (``validationScope``): rulesets and codelists are the real
# Validator's, and a report without their errors must not read as "no rule errors".
VALIDATION_SCOPE = "schema-only"
SCHEMA_ONLY_NOTICE = {
    "id": "schema-only",
    "severity": "advisory",
    "message": "Only the IATI XML schema was checked (the refresher's built-in validator). "
    "Rulesets and codelists were not checked: their errors and warnings are not in this report.",
    "context": [{"text": ""}],
}


@dataclass(frozen=True)
class FileKind:
    """What differs between activity and organisation files."""

    root: str
    child: str
    identifier_tag: str
    title_path: str
    schema_file: str
    noun: str


KINDS = {
    "iati-activities": FileKind(
        "iati-activities",
        "iati-activity",
        "iati-identifier",
        "title/narrative",
        "iati-activities-schema.xsd",
        "activity",
    ),
    "iati-organisations": FileKind(
        "iati-organisations",
        "iati-organisation",
        "organisation-identifier",
        "name/narrative",
        "iati-organisations-schema.xsd",
        "organisation",
    ),
}


class SchemasMissing(RuntimeError):
    """The XSD files are missing, do not compile, or reference something outside their directory.

    An installation problem, not the validated file's: run
    ``python -m iati_refresher.validation.fetch_schemas``.
    """


# ---------------------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------------------

# XMLSchema objects keep their error log on the instance, so each thread gets its own copy.
_local = threading.local()


def default_schemas_dir() -> str:
    from iati_refresher.settings import get_settings

    return get_settings().schemas_dir


class _LocalOnlyResolver(etree.Resolver):
    """Lets the schema parser open files inside the schema directory and nothing else."""

    def __init__(self, allowed_dir: Path):
        super().__init__()
        self.allowed_dir = allowed_dir.resolve()

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        path = system_url[len("file://") :] if system_url.startswith("file://") else system_url
        if "://" not in path:
            candidate = Path(path).resolve()
            if candidate.is_relative_to(self.allowed_dir) and candidate.is_file():
                return None  # libxml2 reads the local file itself
        raise SchemasMissing(f"schema reference outside {self.allowed_dir} refused: {system_url}")


def load_schema(file_type: str, version: str, schemas_dir: str | os.PathLike[str] | None = None) -> etree.XMLSchema:
    """The compiled XSD for ``file_type`` (root element name) and IATI ``version``.

    Compiled once per thread and directory.  Imports and includes resolve only to files in
    ``schemas_dir/<version>/``; anything else (a URL, another directory) is refused.

    :raises SchemasMissing: the schema files are not installed or do not compile.
    """
    directory = Path(schemas_dir or default_schemas_dir()) / version
    key = (str(directory), file_type)
    cache: dict[tuple[str, str], etree.XMLSchema] = _local.__dict__.setdefault("schemas", {})
    if key in cache:
        return cache[key]
    path = directory / KINDS[file_type].schema_file
    if not path.is_file():
        raise SchemasMissing(
            f"{path} is missing: install the IATI schemas with `python -m iati_refresher.validation.fetch_schemas`"
        )
    parser = safe_parser()
    parser.resolvers.add(_LocalOnlyResolver(directory))
    try:
        schema = etree.XMLSchema(etree.parse(str(path), parser))
    except (etree.XMLSchemaParseError, etree.XMLSyntaxError) as exc:
        raise SchemasMissing(f"{path} does not compile: {exc}") from exc
    cache[key] = schema
    return schema


# ---------------------------------------------------------------------------------------
# report building
# ---------------------------------------------------------------------------------------


def _at_line(line: int | None) -> dict[str, str]:
    return {"text": f"At line: {line}" if line else ""}


class _Report:
    """Collects errors grouped by identifier, then category, in first-seen order."""

    def __init__(self) -> None:
        self.file_type = ""
        self.version = ""
        self.groups: dict[str, dict[str, Any]] = {}
        self.meta: list[dict[str, Any]] | None = None
        self.schema_errors = 0
        # set once the schema was applied: where the real Validator would also run its rules
        self.schema_checked = False

    def add(self, identifier: str, title: str, category: str, error: dict[str, Any]) -> None:
        group = self.groups.setdefault(identifier, {"identifier": identifier, "title": title, "errors": {}})
        group["errors"].setdefault(category, []).append(error)
        if category == "schema":
            self.schema_errors += 1

    def add_file_error(
        self, error_id: str, category: str, message: str, context: list[dict[str, str]], severity: str = "critical"
    ) -> None:
        self.add(
            FILE_IDENTIFIER,
            FILE_TITLE,
            category,
            {"id": error_id, "severity": severity, "message": message, "context": context},
        )

    def add_schema_errors(self, identifier: str, title: str, log: etree._ListErrorLog) -> int:
        """Add a validator's errors, one entry per distinct message; returns how many."""
        by_message: dict[str, dict[str, Any]] = {}
        for entry in log:
            message = entry.message
            error = by_message.get(message)
            if error is None:
                error = by_message[message] = {
                    "id": "0.3.1",
                    "severity": "critical",
                    "message": message,
                    "context": [],
                    "_more": 0,
                }
            if len(error["context"]) < MAX_CONTEXTS_PER_ERROR:
                error["context"].append(_at_line(entry.line))
            else:
                error["_more"] += 1
        for error in by_message.values():
            more = error.pop("_more")
            if more:
                error["context"].append({"text": f"... and {more} more occurrences"})
            self.add(identifier, title, "schema", error)
        return len(by_message)

    def to_dict(self) -> dict[str, Any]:
        summary = {"critical": 0, "error": 0, "warning": 0, "advisory": 0}
        errors = []
        if self.schema_checked:
            file_group = self.groups.setdefault(
                FILE_IDENTIFIER, {"identifier": FILE_IDENTIFIER, "title": FILE_TITLE, "errors": {}}
            )
            notices = file_group["errors"].setdefault("information", [])
            if SCHEMA_ONLY_NOTICE not in notices:
                notices.append(dict(SCHEMA_ONLY_NOTICE))
        for group in self.groups.values():
            categories = []
            for category, entries in group["errors"].items():
                for entry in entries:
                    summary[entry["severity"]] = summary.get(entry["severity"], 0) + 1
                categories.append({"category": category, "errors": entries})
            errors.append({"identifier": group["identifier"], "title": group["title"], "errors": categories})
        report: dict[str, Any] = {
            "valid": summary["critical"] == 0,
            "fileType": self.file_type,
            "iatiVersion": self.version,
            "rulesetCommitSha": "",
            "codelistCommitSha": "",
            "orgIdPrefixFileName": "",
            "apiVersion": API_VERSION,
            **({"validationScope": VALIDATION_SCOPE} if self.schema_checked else {}),
            "summary": summary,
        }
        if self.meta is not None and self.file_type:
            report[self.file_type] = self.meta
        report["errors"] = errors
        return report


def _file_problem(error_id: str, category: str, message: str, context: str = "") -> _Report:
    report = _Report()
    report.add_file_error(error_id, category, message, [{"text": context}])
    return report


def _parse_failure(message: str, line: int | None = None) -> tuple[int, dict[str, Any]]:
    report = _Report()
    report.add_file_error("0.1.1", "iati", message, [_at_line(line)])
    return 400, report.to_dict()


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


class _StopValidation(Exception):
    """Raised inside the stream to stop early: in schema-only mode the first problem decides."""


def validate_file(
    path: str | os.PathLike[str],
    *,
    meta: bool,
    schema_only: bool = False,
    schemas_dir: str | os.PathLike[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Validate an IATI file against the XSD of its declared version.

    :param path: the file, in whatever encoding it really has (BOMs and UTF-16 included).
    :param meta: add the per-activity list ``{index, identifier, valid}`` under the fileType key.
    :param schema_only: answer like the schema-validate endpoint: ``(200, {"valid": bool})``.
    :param schemas_dir: where the XSDs are (default ``settings.schemas_dir``).
    :return: ``(http_status, report)`` as the Validator API would: 200 valid, 422 schema errors,
        not IATI or unsupported version, 400 unparseable; 400 ``{"error": "No body"}`` (no
        report) for an empty file.
    :raises SchemasMissing: the XSD files are not installed (an installation problem, not the file's).
    """
    if os.path.getsize(path) == 0:
        return 400, {"error": "No body"}  # both API endpoints answer an empty body so, without a report
    status, report = _validate(Path(path), meta=meta, schema_only=schema_only, schemas_dir=schemas_dir)
    if schema_only:
        return 200, {"valid": bool(report.get("valid"))}
    return status, report


def too_large_answer(size: int, max_bytes: int) -> tuple[int, dict[str, Any]]:
    """The API's answer to a file above its size limit (413, no report)."""
    mib = 1024 * 1024
    return 413, {"error": f"Max Filesize of {max_bytes / mib:g} MiB exceeded. File supplied is {size / mib:.4f} MiB"}


def _validate(
    path: Path, *, meta: bool, schema_only: bool, schemas_dir: str | os.PathLike[str] | None
) -> tuple[int, dict[str, Any]]:
    info = sniff_encoding(path)
    if info.encoding is None:
        return _parse_failure(f"The file is not readable text: {info.reason}")
    try:
        check_prolog(path, info.encoding)
    except XmlRefused as exc:
        return _parse_failure(str(exc))
    with utf8_view(path, info) as view:
        run = _StreamValidation(view, meta=meta, schema_only=schema_only, schemas_dir=schemas_dir)
        try:
            return run.execute()
        except etree.XMLSyntaxError as exc:
            return _parse_failure(exc.msg or str(exc), exc.lineno)
        except _StopValidation:
            return 422, {"valid": False}


class _StreamValidation:
    """One streaming pass over a file: root checks, then each child validated on its own."""

    def __init__(self, view: str, *, meta: bool, schema_only: bool, schemas_dir: str | os.PathLike[str] | None):
        self.view = view
        self.meta = meta
        self.schema_only = schema_only
        self.schemas_dir = schemas_dir
        self.report = _Report()
        self.kind: FileKind | None = None
        self.schema: etree.XMLSchema | None = None
        self.problem: tuple[int, _Report] | None = None  # not IATI / unsupported: known once parsed
        self.index = 0
        self.seen: dict[str, int] = {}
        self.duplicates: list[str] = []
        self.foreign_seen = False
        self.reported: set[str] = set()
        # The API validates each activity wrapped in the root's start tag and preceded by
        # what stood between it and the previous activity: a bad root attribute fails every
        # activity, stray text or an element there fails the activity that follows.
        self.root_attributes_invalid = False
        self.spacer_invalid = False

    def execute(self) -> tuple[int, dict[str, Any]]:
        for depth, event, element in self._events():
            if depth == 0:
                if event == "start":
                    self._start_root(element)
                else:
                    self._end_root(element)
            elif self.schema is not None:
                self._child(element)
        if self.problem is not None:
            status, report = self.problem
            return status, report.to_dict()
        self._finish()
        status = 422 if self.report.schema_errors else 200
        return status, self.report.to_dict()

    def _events(self) -> Iterator[tuple[int, str, etree._Element]]:
        """(depth, event, element) for the root's start/end and each direct child's end.

        Each child is freed after the caller has looked at it, and with it everything before
        it (comments, text), so the partial tree never holds more than one child.
        """
        depth = 0
        root: etree._Element | None = None
        for event, element in safe_iterparse(self.view, events=("start", "end")):
            if event == "start":
                if depth == 0:
                    root = element
                    yield 0, "start", element
                depth += 1
                continue
            depth -= 1
            if depth > 1 and self.schema is None:
                # Only checking that a non-IATI or unsupported file parses: keep nothing.
                element.clear(keep_tail=False)
                parent = element.getparent()
                while parent is not None and element.getprevious() is not None:
                    del parent[0]
            elif depth == 1 and root is not None:
                self._check_before(root, element)
                yield 1, "end", element
                element.clear(keep_tail=True)
                while element.getprevious() is not None:
                    del root[0]
            elif depth == 0:
                yield 0, "end", element

    # --- root ------------------------------------------------------------------------

    def _start_root(self, root: etree._Element) -> None:
        name = local_name(root.tag)
        version = root.get("version") or ""
        kind = KINDS.get(name)
        if kind is None:
            self.problem = (
                422,
                _file_problem(
                    "0.2.1",
                    "iati",
                    "The file is not an IATI file.",
                    f"The root element is <{name}>; IATI files start with <iati-activities> or <iati-organisations>.",
                ),
            )
        elif version not in SUPPORTED_VERSIONS:
            report = _file_problem(
                "0.6.1",
                "documents",
                f"Version '{version}' of the IATI Standard is not supported. "
                f"Supported versions: {', '.join(SUPPORTED_VERSIONS)}",
            )
            report.file_type, report.version = kind.root, version
            self.problem = (422, report)
        if kind is None or self.problem is not None:
            if self.schema_only:
                raise _StopValidation
            return  # keep reading: an unparseable file is reported as such, as the API does
        self.kind = kind
        self.report.file_type, self.report.version = kind.root, version
        if self.meta:
            self.report.meta = []
        self.schema = load_schema(kind.root, version, self.schemas_dir)
        self.report.schema_checked = True
        self._check_root_attributes(kind, self.schema, root)

    def _check_root_attributes(self, kind: FileKind, schema: etree.XMLSchema, root: etree._Element) -> None:
        """Validate the root's attributes on an empty copy (its children are checked one by one)."""
        skeleton = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=root.nsmap)
        skeleton.sourceline = root.sourceline
        if schema.validate(skeleton):
            return
        missing_children = f"Element '{kind.root}': Missing child element(s)."
        log = [e for e in schema.error_log if not e.message.startswith(missing_children)]
        if log:
            self.root_attributes_invalid = True
            self._schema_errors(FILE_IDENTIFIER, FILE_TITLE, log)

    def _end_root(self, root: etree._Element) -> None:
        kind = self.kind
        if self.schema is None or kind is None:
            return
        if root.text is not None:  # a root without children: its text was never looked at
            self._check_text(kind, root, root.text)
        for node in root:  # the last child and whatever follows it
            self._check_node(kind, root, node)
        if self.index == 0:
            self._structure_error(
                "content",
                root.sourceline,
                f"Element '{kind.root}': Missing child element(s). Expected is ( {kind.child} ).",
            )

    def _check_before(self, root: etree._Element, element: etree._Element) -> None:
        """Check the root's own content before ``element``: its text and the siblings before it.

        Every node is looked at exactly once: as a preceding sibling of the next child to end
        (its tail is complete by then), or at the root's end.
        """
        kind = self.kind
        if self.schema is None or kind is None:
            return
        if root.text is not None:
            self._check_text(kind, root, root.text)
            root.text = None
        for node in element.itersiblings(preceding=True):
            self._check_node(kind, root, node)

    def _check_node(self, kind: FileKind, root: etree._Element, node: etree._Element) -> None:
        """One node directly under the root, other than a child being validated.

        The root's content model is ``child+, ##other*``; the messages are libxml2's, and like
        libxml2 only the first content-model violation is reported.
        """
        if node.tail is not None:
            self._check_text(kind, root, node.tail)
        tag = node.tag
        if not isinstance(tag, str) or tag == kind.child:
            return  # comments, processing instructions and children are fine here
        self.spacer_invalid = True
        if tag.startswith("{") and self.index > 0:
            self.foreign_seen = True  # elements of other namespaces may follow the children
            return
        if self.foreign_seen:
            expected = ""
        elif self.index == 0:
            expected = f" Expected is ( {kind.child} )."
        else:
            expected = f" Expected is one of ( {kind.child}, ##other* )."
        self._structure_error("content", node.sourceline, f"Element '{tag}': This element is not expected.{expected}")

    def _check_text(self, kind: FileKind, root: etree._Element, text: str) -> None:
        if text.strip():
            self.spacer_invalid = True
            self._structure_error(
                "text",
                root.sourceline,
                f"Element '{kind.root}': Character content other than whitespace is not allowed "
                "because the content type is 'element-only'.",
            )

    def _structure_error(self, kind: str, line: int | None, message: str) -> None:
        if kind in self.reported:  # like libxml2, one report per kind of content-model error
            return
        self.reported.add(kind)
        if self.schema_only:
            raise _StopValidation
        self.report.add(
            FILE_IDENTIFIER,
            FILE_TITLE,
            "schema",
            {"id": "0.3.1", "severity": "critical", "message": message, "context": [_at_line(line)]},
        )

    # --- children ------------------------------------------------------------------------

    def _child(self, element: etree._Element) -> None:
        kind, schema = self.kind, self.schema
        if kind is None or schema is None or element.tag != kind.child:
            return  # other root children were checked by _check_before / _end_root
        identifier = _identifier(kind, element)
        title = _title(kind, element)
        count = self.seen[identifier] = self.seen.get(identifier, 0) + 1
        if count > 1:
            self.duplicates.append(identifier)
            identifier = f"{identifier}({count})"
        valid = bool(schema.validate(element))
        if not valid:
            self._schema_errors(identifier, title, schema.error_log)
        # what precedes it (see __init__) decides too; the errors themselves are file-level
        valid = valid and not self.root_attributes_invalid and not self.spacer_invalid
        self.spacer_invalid = False
        if self.report.meta is not None:
            self.report.meta.append({"identifier": identifier, "valid": valid, "index": self.index})
        self.index += 1

    def _schema_errors(self, identifier: str, title: str, log: Any) -> None:
        if self.schema_only:
            raise _StopValidation
        self.report.add_schema_errors(identifier, title, log)

    def _finish(self) -> None:
        if self.duplicates and self.kind is not None:
            unique = list(dict.fromkeys(self.duplicates))
            self.report.add_file_error(
                "1.1.2",
                "identifiers",
                f"The {self.kind.noun} identifier must be unique for each {self.kind.noun}.",
                [{"text": f"Duplicate found for {self.kind.identifier_tag} = '{i}'"} for i in unique],
                severity="error",
            )


def _identifier(kind: FileKind, element: etree._Element) -> str:
    """The project's one identifier rule (stripped, no CR/LF, comments ignored)."""
    if kind.child == "iati-activity":
        identifier = identifier_of(element)
    else:
        node = element.find(kind.identifier_tag)
        identifier = normalise_identifier("".join(node.itertext())) if node is not None else ""
    return identifier or NO_IDENTIFIER


def _title(kind: FileKind, element: etree._Element) -> str:
    node = element.find(kind.title_path)
    return "".join(node.itertext()).strip() if node is not None else ""
