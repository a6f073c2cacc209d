"""Clean: the exclusion rules, copying valid files and reducing invalid ones."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import pytest
from lxml import etree

from iati_refresher.iati.xml import XmlRefused
from iati_refresher.settings import Settings
from iati_refresher.stages.clean import (
    CleanDecision,
    CleanSkipped,
    clean_document,
    clean_file,
    cli_clean,
    decide_clean,
    valid_activity_indexes,
)
from iati_refresher.stages.flatten import iter_flat_activities
from iati_refresher.storage import BlobStorageError, LocalBlobStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clean"
REPORT = json.loads((FIXTURES / "invalid.report.json").read_text())


def report(valid: bool, **changes) -> dict:
    return {"valid": valid, "fileType": "iati-activities", "iatiVersion": "2.03", **changes}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, ("skip", "not_iati")),
        ({"error": "Max Filesize of 60 MiB exceeded"}, ("skip", "not_iati")),
        (report(True, fileType="iati-organisations"), ("skip", "organisation_file")),
        (report(False, fileType=""), ("skip", "not_iati")),
        (report(True, iatiVersion="1.05"), ("skip", "version_1x")),
        (report(False, iatiVersion="1.03"), ("skip", "version_1x")),
        (report(True), ("copy", None)),
        (report(False), ("skip", "no_valid_activities")),
        (report(False, **{"iati-activities": [{"valid": False, "index": 0}]}), ("skip", "no_valid_activities")),
        (report(False, **{"iati-activities": [{"valid": True, "index": 0}]}), ("reduce", None)),
        (report(False, iatiVersion="", **{"iati-activities": [{"valid": True, "index": 0}]}), ("skip", "not_iati")),
        (report(False, iatiVersion="3.0", **{"iati-activities": [{"valid": True, "index": 0}]}), ("skip", "not_iati")),
    ],
)
def test_decide_clean(given, expected):
    decision = decide_clean(given)
    assert isinstance(decision, CleanDecision)
    assert (decision.action, decision.code) == expected
    assert (decision.message is None) == (decision.action != "skip")


def test_no_valid_activities_message_is_the_reference_one():
    assert decide_clean(report(False)).message == "No valid activities"


def test_valid_activity_indexes_reads_only_clear_valid_entries():
    meta = report(
        False,
        **{
            "iati-activities": [
                {"identifier": "A", "valid": True, "index": 0},
                {"identifier": "B", "valid": "true", "index": 1},  # not the boolean true
                {"identifier": "C", "valid": True, "index": "2"},
                {"identifier": "D", "valid": True, "index": True},
                {"identifier": "E", "valid": True},
                "junk",
                {"identifier": "F", "valid": True, "index": 5},
            ]
        },
    )
    assert valid_activity_indexes(meta) == {0, 2, 5}


# --- clean_file ---------------------------------------------------------------------------


def test_valid_file_is_copied_byte_for_byte(tmp_path):
    source = tmp_path / "latin1.xml"
    source.write_bytes(
        b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<iati-activities version="2.03"><!-- caf\xe9 -->'
        b"<iati-activity><iati-identifier>A</iati-identifier></iati-activity></iati-activities>"
    )
    result = clean_file(source, report(True), tmp_path / "out.xml")
    assert (result.mode, result.activities_total, result.activities_kept) == ("copied", None, None)
    assert (tmp_path / "out.xml").read_bytes() == source.read_bytes()


def test_invalid_file_keeps_only_the_valid_activities(tmp_path):
    out = tmp_path / "out.xml"
    result = clean_file(FIXTURES / "invalid.xml", REPORT, out)
    assert (result.mode, result.activities_total, result.activities_kept) == ("reduced", 4, 2)
    data = out.read_bytes()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities ')
    root = etree.fromstring(data)
    original = etree.parse(str(FIXTURES / "invalid.xml")).getroot()
    assert root.tag == "iati-activities"
    assert dict(root.attrib) == dict(original.attrib)
    assert root.nsmap == original.nsmap
    assert [a.findtext("iati-identifier") for a in root] == ["CL-0", "CL-2"]
    # nothing but activities between activities; what is inside an activity is kept
    assert all(child.tag == "iati-activity" for child in root)
    assert all(not (child.tail or "").strip() for child in root)
    assert not (root.text or "").strip()
    for dropped in (b"stray text", b"processing", b"between activities"):
        assert dropped not in data
    assert b"<!-- kept inside -->" in data
    assert "Zero — valid".encode() in data


def test_reduced_file_flattens_like_the_kept_activities(tmp_path):
    out = tmp_path / "out.xml"
    clean_file(FIXTURES / "invalid.xml", REPORT, out)
    everything = list(iter_flat_activities(FIXTURES / "invalid.xml"))
    assert list(iter_flat_activities(out)) == [everything[0], everything[2]]


@pytest.mark.parametrize(
    ("label", "encode"),
    [
        ("latin-1 declared", lambda t: ('<?xml version="1.0" encoding="ISO-8859-1"?>' + t).encode("latin-1")),
        ("windows-1252 undeclared", lambda t: t.encode("cp1252")),
        ("utf-16 with BOM", lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le")),
    ],
)
def test_invalid_file_in_another_encoding_is_written_as_utf8(tmp_path, label, encode):
    text = (
        '<iati-activities version="2.03"><iati-activity><iati-identifier>A</iati-identifier></iati-activity>'
        "<iati-activity><iati-identifier>B</iati-identifier><title><narrative>Café “x”</narrative></title>"
        "</iati-activity></iati-activities>"
    )
    if label == "latin-1 declared":
        text = text.replace("“x”", "x")
    source = tmp_path / "source.xml"
    source.write_bytes(encode(text))
    meta = report(
        False,
        **{
            "iati-activities": [
                {"identifier": "A", "valid": False, "index": 0},
                {"identifier": "B", "valid": True, "index": 1},
            ]
        },
    )
    clean_file(source, meta, tmp_path / "out.xml")
    root = etree.parse(str(tmp_path / "out.xml")).getroot()
    assert [a.findtext("iati-identifier") for a in root] == ["B"]
    expected = "Café x" if label == "latin-1 declared" else "Café “x”"
    assert root.find("iati-activity/title/narrative").text == expected


def test_meta_that_does_not_describe_the_file_keeps_nothing(tmp_path):
    out = tmp_path / "out.xml"
    meta = report(False, **{"iati-activities": [{"identifier": "X", "valid": True, "index": 9}]})
    with pytest.raises(CleanSkipped) as skipped:
        clean_file(FIXTURES / "invalid.xml", meta, out)
    assert skipped.value.code == "meta_conflict"
    assert not out.exists()


def test_truncated_invalid_file_is_a_parse_error_and_leaves_no_output(tmp_path):
    source = tmp_path / "truncated.xml"
    source.write_bytes((FIXTURES / "invalid.xml").read_bytes()[:-120])
    out = tmp_path / "out.xml"
    with pytest.raises(etree.XMLSyntaxError):
        clean_file(source, REPORT, out)
    assert not out.exists()


def test_wrong_root_when_reducing_is_not_iati(tmp_path):
    source = tmp_path / "org.xml"
    source.write_text("<iati-organisations><iati-activity/></iati-organisations>")
    with pytest.raises(CleanSkipped) as skipped:
        clean_file(source, REPORT, tmp_path / "out.xml")
    assert skipped.value.code == "not_iati"


@pytest.mark.parametrize("valid", [True, False])
def test_doctype_is_refused_in_both_modes(tmp_path, valid):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    source = tmp_path / "hostile.xml"
    source.write_text(
        f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]><iati-activities><iati-activity>'
        "<iati-identifier>&e;</iati-identifier></iati-activity></iati-activities>"
    )
    meta = report(valid, **{"iati-activities": [{"valid": True, "index": 0}]})
    out = tmp_path / "out.xml"
    with pytest.raises(XmlRefused):
        clean_file(source, meta, out)
    assert not out.exists()


def test_skipped_rules_raise_before_reading_the_file(tmp_path):
    with pytest.raises(CleanSkipped) as skipped:
        clean_file(tmp_path / "does-not-exist.xml", report(True, fileType="iati-organisations"), tmp_path / "o.xml")
    assert skipped.value.code == "organisation_file"


def test_cli_clean(tmp_path):
    out, err = tmp_path / "out.xml", io.StringIO()
    report_path = str(FIXTURES / "invalid.report.json")
    assert cli_clean(str(FIXTURES / "invalid.xml"), report_path, str(out), err) == 0
    assert "kept 2 of 4 activities" in err.getvalue()
    org = tmp_path / "org.json"
    org.write_text(json.dumps(report(True, fileType="iati-organisations")))
    err = io.StringIO()
    assert cli_clean(str(FIXTURES / "invalid.xml"), str(org), str(tmp_path / "o2.xml"), err) == 2
    assert "organisation_file" in err.getvalue()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    err = io.StringIO()
    assert cli_clean(str(FIXTURES / "invalid.xml"), str(bad_json), str(tmp_path / "o3.xml"), err) == 1
    assert "not a JSON validation report" in err.getvalue()
    err = io.StringIO()
    assert cli_clean(str(tmp_path / "nope.xml"), report_path, str(tmp_path / "o4.xml"), err) == 1
    assert "cannot read" in err.getvalue()


# --- the stage function ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_clean_document_copies_a_valid_file(store):
    store.put_file("source", "h.xml", FIXTURES / "invalid.xml")
    outcome = clean_document({"id": "d", "hash": "h"}, report(True), store, Settings())
    assert outcome.status == "ok"
    assert outcome.data == {"mode": "copied", "activities_total": None, "activities_kept": None}
    assert store.get_bytes("clean", "h.xml") == (FIXTURES / "invalid.xml").read_bytes()


def test_clean_document_reduces_an_invalid_file(store):
    store.put_file("source", "h.xml", FIXTURES / "invalid.xml")
    outcome = clean_document({"id": "d", "hash": "h"}, REPORT, store, Settings())
    assert outcome.status == "ok"
    assert outcome.data == {"mode": "reduced", "activities_total": 4, "activities_kept": 2}
    root = etree.fromstring(store.get_bytes("clean", "h.xml"))
    assert [a.findtext("iati-identifier") for a in root] == ["CL-0", "CL-2"]


def test_clean_document_skips_by_rule_without_downloading(store):
    # no source blob exists: a rule decision must not need it
    for meta, code in [
        (report(True, fileType="iati-organisations"), "organisation_file"),
        (report(False, iatiVersion="1.02"), "version_1x"),
        (report(False), "no_valid_activities"),
        (None, "not_iati"),
    ]:
        outcome = clean_document({"id": "d", "hash": "h"}, meta, store, Settings())
        assert (outcome.status, outcome.code) == ("skipped", code)
    assert list(store.list("clean")) == []


def test_clean_document_failures(store):
    store.put_bytes("source", "broken.xml", b"<iati-activities><iati-activity></iati-activities>")
    store.put_bytes("source", "doctype.xml", b'<!DOCTYPE x [<!ENTITY a "b">]><iati-activities/>')
    missing = clean_document({"id": "d", "hash": "missing"}, REPORT, store, Settings())
    broken = clean_document({"id": "d", "hash": "broken"}, REPORT, store, Settings())
    doctype = clean_document({"id": "d", "hash": "doctype"}, report(True), store, Settings())
    assert (missing.status, missing.code, missing.retryable) == ("failed", "source_missing", False)
    assert (broken.status, broken.code, broken.retryable) == ("failed", "parse_error", False)
    assert broken.message.startswith("Could not parse")
    assert (doctype.status, doctype.code) == ("skipped", "doctype_refused")
    assert list(store.list("clean")) == []


class FailingStore(LocalBlobStore):
    def put_file(self, container, name, path):
        if container == "clean":
            raise BlobStorageError("service unavailable")
        super().put_file(container, name, path)


def test_clean_document_storage_failure_is_retryable(tmp_path):
    store = FailingStore(tmp_path / "blobs")
    store.put_file("source", "h.xml", FIXTURES / "invalid.xml")
    outcome = clean_document({"id": "d", "hash": "h"}, report(True), store, Settings())
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "storage_error", True)
