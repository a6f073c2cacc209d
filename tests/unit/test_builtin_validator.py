"""The built-in XSD validator: report shape, statuses, streaming, hostile and odd input."""

from __future__ import annotations

import codecs
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from iati_refresher.iati.xml import safe_parser
from iati_refresher.validation import builtin, fetch_schemas
from iati_refresher.validation.builtin import SchemasMissing, load_schema, validate_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "validation"
VALID = FIXTURES / "activities-valid-2.03.xml"
MIXED = FIXTURES / "activities-mixed-2.03.xml"
ORGANISATION = FIXTURES / "organisation-valid-2.03.xml"

ACTIVITY = """<iati-activity>
    <iati-identifier>{identifier}</iati-identifier>
    <reporting-org ref="XM-EXAMPLE-1" type="10"><narrative>Example</narrative></reporting-org>
    <title><narrative>{title}</narrative></title>
    <description><narrative>d</narrative></description>
    <participating-org role="1"/>
    <activity-status code="2"/>
    {dates}
  </iati-activity>"""
GOOD_DATE = '<activity-date type="1" iso-date="2023-01-01"/>'
BAD_DATE = '<activity-date iso-date="2023-01-01"/>'


def activity(identifier: str = "XM-EXAMPLE-1-X", title: str = "t", dates: str = GOOD_DATE) -> str:
    return ACTIVITY.format(identifier=identifier, title=title, dates=dates)


def document(*children: str, version: str = "2.03", root: str = "iati-activities", extra: str = "") -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} version="{version}"{extra}>\n'
        + "\n".join(children)
        + f"\n</{root}>\n"
    )


def write(tmp_path: Path, content: str | bytes, name: str = "doc.xml") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def schema_messages(report: dict) -> list[tuple[str, str]]:
    """(identifier, message) of every schema error in a grouped report."""
    return [
        (group["identifier"], error["message"])
        for group in report["errors"]
        for category in group["errors"]
        if category["category"] == "schema"
        for error in category["errors"]
    ]


def whole_document_errors(path: Path) -> set[tuple[int, str]]:
    """What validating the whole tree at once reports (the reference behaviour of libxml2)."""
    doc = etree.parse(str(path), safe_parser())
    root = doc.getroot()
    schema = load_schema(etree.QName(root).localname, root.get("version"))
    schema.validate(doc)
    return {(e.line, e.message) for e in schema.error_log}


def streamed_errors(report: dict) -> set[tuple[int, str]]:
    return {
        (int(context["text"].removeprefix("At line: ")), error["message"])
        for group in report["errors"]
        for category in group["errors"]
        if category["category"] == "schema"
        for error in category["errors"]
        for context in error["context"]
    }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port nobody should connect to (for "never touches the network" checks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        yield sock


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


# --- valid files and the report shape --------------------------------------------------------


def test_valid_activity_file_reports_200_with_meta_in_document_order() -> None:
    status, report = validate_file(VALID, meta=True)

    assert status == 200
    assert report["valid"] is True
    assert report["fileType"] == "iati-activities"
    assert report["iatiVersion"] == "2.03"
    # the one advisory says what was not checked (validator-web shows it with the report)
    assert report["summary"] == {"critical": 0, "error": 0, "warning": 0, "advisory": 1}
    assert report["validationScope"] == "schema-only"
    ((group_id, notice),) = [(g["identifier"], e) for g in report["errors"] for c in g["errors"] for e in c["errors"]]
    assert (group_id, notice["id"], notice["severity"]) == ("file", "schema-only", "advisory")
    assert "Rulesets and codelists were not checked" in notice["message"]
    assert report["iati-activities"] == [
        {"identifier": "XM-EXAMPLE-1-A1", "valid": True, "index": 0},
        {"identifier": "XM-EXAMPLE-1-A2", "valid": True, "index": 1},
    ]


def test_meta_is_only_present_when_asked() -> None:
    _, report = validate_file(VALID, meta=False)
    assert "iati-activities" not in report
    assert report["valid"] is True


def test_organisation_file_uses_its_own_file_type_and_identifier() -> None:
    status, report = validate_file(ORGANISATION, meta=True)

    assert status == 200
    assert report["fileType"] == "iati-organisations"
    assert report["iati-organisations"] == [{"identifier": "XM-EXAMPLE-1", "valid": True, "index": 0}]


@pytest.mark.parametrize("version", ["2.01", "2.02", "2.03"])
def test_each_supported_version_validates_against_its_own_schema(tmp_path: Path, version: str) -> None:
    path = write(tmp_path, VALID.read_text().replace('version="2.03"', f'version="{version}"'))
    status, report = validate_file(path, meta=False)
    assert (status, report["iatiVersion"], report["valid"]) == (200, version, True)


# --- schema errors ---------------------------------------------------------------------------


def test_mixed_file_groups_errors_per_activity_and_marks_meta() -> None:
    status, report = validate_file(MIXED, meta=True)

    assert status == 422
    assert report["valid"] is False
    # The root's generated-datetime is invalid: the real Validator checks every activity
    # wrapped in that root start tag, so none of them is valid there, nor here.
    assert report["iati-activities"] == [
        {"identifier": "XM-EXAMPLE-1-B1", "valid": False, "index": 0},
        {"identifier": "XM-EXAMPLE-1-B2", "valid": False, "index": 1},
        {"identifier": "XM-EXAMPLE-1-B1(2)", "valid": False, "index": 2},
        {"identifier": "noIdentifier", "valid": False, "index": 3},
    ]
    groups = {g["identifier"]: g for g in report["errors"]}
    assert set(groups) == {"file", "XM-EXAMPLE-1-B2", "noIdentifier"}
    assert groups["XM-EXAMPLE-1-B2"]["title"] == "Second"
    by_category = {c["category"]: c["errors"] for c in groups["file"]["errors"]}
    # The root's bad attribute is reported once, at file level, not once per activity.
    assert [e["message"] for e in by_category["schema"]] == [
        "Element 'iati-activities', attribute 'generated-datetime': 'yesterday' is not a valid value "
        "of the atomic type 'xs:dateTime'."
    ]
    duplicate = by_category["identifiers"][0]
    assert (duplicate["id"], duplicate["severity"]) == ("1.1.2", "error")
    assert duplicate["context"] == [{"text": "Duplicate found for iati-identifier = 'XM-EXAMPLE-1-B1'"}]
    schema_error = groups["XM-EXAMPLE-1-B2"]["errors"][0]["errors"][0]
    assert (schema_error["id"], schema_error["severity"]) == ("0.3.1", "critical")
    assert schema_error["context"] == [{"text": "At line: 24"}]
    assert report["summary"] == {"critical": 3, "error": 1, "warning": 0, "advisory": 1}


def test_streaming_finds_exactly_what_whole_document_validation_finds() -> None:
    _, report = validate_file(MIXED, meta=False)
    assert streamed_errors(report) == whole_document_errors(MIXED)


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ((), "Missing child element(s). Expected is ( iati-activity )."),
        ((activity(), "stray text"), "Character content other than whitespace is not allowed"),
        (("<unexpected/>", activity()), "Element 'unexpected': This element is not expected. Expected is ( iati"),
        ((activity(), "<unexpected/>"), "Element 'unexpected': This element is not expected. Expected is one of"),
        ((activity(), '<e:x xmlns:e="urn:x"/>', "<unexpected/>"), "Element 'unexpected': This element is not"),
        (('<e:x xmlns:e="urn:x"/>',), "Element '{urn:x}x': This element is not expected."),
    ],
    ids=[
        "no-children",
        "stray-text",
        "unexpected-first",
        "unexpected-later",
        "unexpected-after-extension",
        "extension-first",
    ],
)
def test_root_content_model_is_checked_like_whole_document_validation(
    tmp_path: Path, children: tuple[str, ...], expected: str
) -> None:
    path = write(tmp_path, document(*children))

    status, report = validate_file(path, meta=True)

    assert status == 422
    messages = [message for identifier, message in schema_messages(report) if identifier == "file"]
    assert any(expected in m for m in messages), messages
    assert {m for _, m in whole_document_errors(path)} == {m for _, m in schema_messages(report)}


def test_identifier_uses_the_project_rule(tmp_path: Path) -> None:
    path = write(tmp_path, document(activity(identifier=" XM-EXAMPLE-1<!-- note -->-Z\r\n ")))
    _, report = validate_file(path, meta=True)
    assert report["iati-activities"][0]["identifier"] == "XM-EXAMPLE-1-Z"


def test_repeated_error_keeps_a_bounded_context_list(tmp_path: Path) -> None:
    count = builtin.MAX_CONTEXTS_PER_ERROR + 7
    path = write(tmp_path, document(activity(dates=BAD_DATE * count)))

    _, report = validate_file(path, meta=False)

    (error,) = report["errors"][0]["errors"][0]["errors"]
    assert len(error["context"]) == builtin.MAX_CONTEXTS_PER_ERROR + 1
    assert error["context"][-1] == {"text": "... and 7 more occurrences"}
    assert report["summary"]["critical"] == 1  # one per distinct message, as the API counts


# --- file-level outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "shown"), [("1.03", "1.03"), ("", "")])
def test_unsupported_or_missing_version_is_0_6_1(tmp_path: Path, version: str, shown: str) -> None:
    path = write(tmp_path, document(activity(), version=version))

    status, report = validate_file(path, meta=True)

    assert status == 422
    assert (report["fileType"], report["iatiVersion"], report["valid"]) == ("iati-activities", shown, False)
    (group,) = report["errors"]
    assert group["identifier"] == "file"
    assert group["errors"][0]["category"] == "documents"
    assert group["errors"][0]["errors"][0]["id"] == "0.6.1"
    assert "iati-activities" not in report  # no meta for files that were not validated


def test_not_iati_is_0_2_1(tmp_path: Path) -> None:
    path = write(tmp_path, "<rss version='2.0'><channel/></rss>")

    status, report = validate_file(path, meta=True)

    assert status == 422
    assert (report["fileType"], report["iatiVersion"]) == ("", "")
    assert report["errors"][0]["errors"][0]["errors"][0]["id"] == "0.2.1"


@pytest.mark.parametrize(
    "content",
    [
        document(activity(), activity()).rsplit("</iati-activity>", 1)[0],  # truncated download
        document(activity(), "<broken></iati-activity>"),  # malformed after a valid activity
        "<rss><channel></rss>",  # a malformed non-IATI file is reported as unparseable
        b"   \n",
        b"\x00\x01\x02\xff\xfe binary \x00",
        "just some text",
    ],
    ids=["truncated", "malformed-late", "malformed-not-iati", "whitespace", "binary", "not-xml"],
)
def test_unparseable_input_is_400_with_0_1_1(tmp_path: Path, content: str | bytes) -> None:
    status, report = validate_file(write(tmp_path, content), meta=True)

    assert status == 400
    assert report["valid"] is False
    assert (report["fileType"], report["iatiVersion"]) == ("", "")
    assert "iati-activities" not in report
    (group,) = report["errors"]
    assert (group["identifier"], group["title"]) == ("file", "File level errors")
    (category,) = group["errors"]
    assert category["category"] == "iati"
    (error,) = category["errors"]
    assert (error["id"], error["severity"]) == ("0.1.1", "critical")
    assert error["message"]


def test_parse_error_reports_its_line(tmp_path: Path) -> None:
    content = document(activity(), "<broken></iati-activity>")
    line = content[: content.index("<broken>")].count("\n") + 1
    _, report = validate_file(write(tmp_path, content), meta=False)
    assert report["errors"][0]["errors"][0]["errors"][0]["context"] == [{"text": f"At line: {line}"}]


# --- hostile XML -------------------------------------------------------------------------------

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE iati-activities [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
]>
<iati-activities version="2.03"><iati-activity><iati-identifier>&d;</iati-identifier></iati-activity></iati-activities>
"""


def test_entity_expansion_is_refused_not_expanded(tmp_path: Path) -> None:
    status, report = validate_file(write(tmp_path, LAUGHS), meta=True)
    assert status == 400
    assert "DOCTYPE" in report["errors"][0]["errors"][0]["errors"][0]["message"]


def test_external_entities_read_no_file_and_reach_no_network(tmp_path: Path, listener: socket.socket) -> None:
    secret = write(tmp_path, "TOP-SECRET-CONTENT", "secret.txt")
    port = listener.getsockname()[1]
    content = (
        f'<?xml version="1.0"?>\n<!DOCTYPE iati-activities SYSTEM "http://127.0.0.1:{port}/x.dtd" [\n'
        f' <!ENTITY s SYSTEM "file://{secret}">\n'
        f' <!ENTITY n SYSTEM "http://127.0.0.1:{port}/n">\n]>\n'
        '<iati-activities version="2.03"><iati-activity><iati-identifier>&s;&n;</iati-identifier>'
        "</iati-activity></iati-activities>"
    )

    status, report = validate_file(write(tmp_path, content), meta=True)

    assert status == 400
    assert "TOP-SECRET" not in repr(report)
    assert_no_connection(listener)


def test_schema_location_hints_in_the_file_are_ignored(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    hints = (
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xsi:noNamespaceSchemaLocation="http://127.0.0.1:{port}/evil.xsd"'
        f' xsi:schemaLocation="urn:x http://127.0.0.1:{port}/x.xsd"'
    )
    path = write(tmp_path, document(activity(), extra=hints))

    status, _ = validate_file(path, meta=False)

    assert status == 200  # validated against the installed schema, not the file's hint
    assert_no_connection(listener)


# --- encodings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-8", codecs.BOM_UTF8)],
)
def test_files_with_byte_order_marks_validate(tmp_path: Path, encoding: str, bom: bytes) -> None:
    text = VALID.read_text(encoding="utf-8")
    if encoding.startswith("utf-16"):
        text = text.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    path = write(tmp_path, bom + text.encode(encoding))

    status, report = validate_file(path, meta=True)

    assert status == 200, report["errors"]
    assert [m["identifier"] for m in report["iati-activities"]] == ["XM-EXAMPLE-1-A1", "XM-EXAMPLE-1-A2"]


def test_single_byte_file_is_decoded_from_its_real_encoding(tmp_path: Path) -> None:
    content = document(activity(title="Caf\u00e9 \u00e0 Bamako")).replace("UTF-8", "ISO-8859-1")
    path = write(tmp_path, content.encode("latin-1"))

    status, _ = validate_file(path, meta=False)

    assert status == 200
    bad = write(
        tmp_path,
        document(activity(title="Caf\u00e9", dates=BAD_DATE)).replace("UTF-8", "ISO-8859-1").encode("latin-1"),
        "bad.xml",
    )
    _, bad_report = validate_file(bad, meta=False)
    assert bad_report["errors"][0]["title"] == "Caf\u00e9"


# --- schema-only mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "valid"),
    [
        (VALID.read_text(), True),
        (MIXED.read_text(), False),
        ("<rss/>", False),
        (document(activity(), version="1.03"), False),
        ("<iati-activities", False),
    ],
    ids=["valid", "invalid", "not-iati", "old-version", "unparseable"],
)
def test_schema_only_answers_like_the_schema_endpoint(tmp_path: Path, content: str, valid: bool) -> None:
    assert validate_file(write(tmp_path, content), meta=False, schema_only=True) == (200, {"valid": valid})


@pytest.mark.parametrize("schema_only", [True, False], ids=["schema-endpoint", "validate-endpoint"])
def test_an_empty_file_is_refused_like_the_api_does_without_a_report(tmp_path: Path, schema_only: bool) -> None:
    # the API answers an empty body 400 {"error": "No body"} on both endpoints: no report,
    # so nothing counts toward the publisher's flag
    assert validate_file(write(tmp_path, b""), meta=True, schema_only=schema_only) == (400, {"error": "No body"})


# --- streaming and schemas -------------------------------------------------------------------------


def test_partial_tree_keeps_nothing_from_earlier_activities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, document(*(activity(identifier=f"XM-EXAMPLE-1-{i}") for i in range(200))))
    sizes: list[int] = []
    original = builtin._StreamValidation._child

    def spy(self: builtin._StreamValidation, element: etree._Element) -> None:
        # The parser reads ahead, so later activities may already be there; what must not
        # pile up is what came before.
        sizes.append(sum(1 for _ in element.itersiblings(preceding=True)))
        original(self, element)

    monkeypatch.setattr(builtin._StreamValidation, "_child", spy)

    status, report = validate_file(path, meta=True)

    assert status == 200
    assert len(report["iati-activities"]) == 200
    assert max(sizes) == 1  # the previous (emptied) activity, until it is dropped


def test_concurrent_validations_do_not_mix_error_logs() -> None:
    expected = validate_file(MIXED, meta=True)
    results: list[tuple[int, dict]] = []

    def run() -> None:
        for _ in range(5):
            results.append(validate_file(MIXED, meta=True))
            results.append(validate_file(VALID, meta=True))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert [r for r in results if r[0] == 422] == [expected] * 20
    assert all(r[1]["valid"] for r in results if r[0] == 200)


def test_missing_schemas_raise_an_installation_error(tmp_path: Path) -> None:
    with pytest.raises(SchemasMissing, match="fetch_schemas"):
        validate_file(VALID, meta=False, schemas_dir=tmp_path)


def test_schema_imports_outside_the_schema_directory_are_refused(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    (tmp_path / "2.03").mkdir()
    (tmp_path / "2.03" / "iati-activities-schema.xsd").write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        f'<xs:import namespace="urn:x" schemaLocation="http://127.0.0.1:{port}/x.xsd"/>'
        '<xs:include schemaLocation="/etc/hostname"/>'
        '<xs:element name="iati-activities"/></xs:schema>'
    )

    with pytest.raises(SchemasMissing):
        load_schema("iati-activities", "2.03", tmp_path)
    assert_no_connection(listener)


# --- installing the schemas ----------------------------------------------------------------------


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/simple"


def test_fetch_is_a_no_op_when_the_schemas_are_present(tmp_path: Path) -> None:
    for version in fetch_schemas.IATI_VERSIONS:
        (tmp_path / version).mkdir()
        for name in fetch_schemas.SCHEMA_FILES:
            (tmp_path / version / name).write_text("<installed/>")

    assert fetch_schemas.fetch_schemas(tmp_path, index_url=closed_port_url()) is False
    assert (tmp_path / "2.03" / "xml.xsd").read_text() == "<installed/>"


def test_fetch_offline_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(fetch_schemas.SchemaFetchError, match="--sdist"):
        fetch_schemas.fetch_schemas(tmp_path / "schemas", index_url=closed_port_url(), timeout_s=5)
    assert not fetch_schemas.schemas_present(tmp_path / "schemas")


def test_fetch_refuses_an_archive_with_the_wrong_checksum(tmp_path: Path) -> None:
    fake = tmp_path / fetch_schemas.SDIST_NAME
    fake.write_bytes(b"not the real archive")
    with pytest.raises(fetch_schemas.SchemaFetchError, match="sha256"):
        fetch_schemas.fetch_schemas(tmp_path / "schemas", sdist=fake)
    assert not fetch_schemas.schemas_present(tmp_path / "schemas")


def test_extraction_takes_only_the_known_files_and_applies_the_known_fix(tmp_path: Path) -> None:
    old, new = fetch_schemas.PATCHES[("2.03", "iati-organisations-schema.xsd")]
    archive = tmp_path / "sdist.tar.gz"
    prefix = f"{fetch_schemas.PACKAGE}-{fetch_schemas.PACKAGE_VERSION}/iati/resources/standard"
    with tarfile.open(archive, "w:gz") as tar:
        for version in fetch_schemas.IATI_VERSIONS:
            for name in (*fetch_schemas.SCHEMA_FILES, "../../escape.xsd"):
                content = f"<x>{old}</x>" if (version, name) in fetch_schemas.PATCHES else f"<{version}/>"
                info = tarfile.TarInfo(f"{prefix}/{version.replace('.', '-')}/schemas/{name}")
                data = content.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    staged = tmp_path / "staged"
    fetch_schemas._extract(archive, staged)
    fetch_schemas._patch(staged)

    assert fetch_schemas.schemas_present(staged)
    assert (staged / "2.03" / "iati-organisations-schema.xsd").read_text() == f"<x>{new}</x>"
    assert (staged / "2.01" / "xml.xsd").read_text() == "<2.01/>"
    assert not list(tmp_path.rglob("escape.xsd"))
