"""Lakify: the lake JSON/XML formats, identifiers and duplicates, and the stage function."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from lxml import etree

from iati_refresher.iati.identifiers import identifier_hash, lake_name
from iati_refresher.iati.xml import XmlRefused
from iati_refresher.settings import Settings
from iati_refresher.stages.flatten import NotIatiError, iter_flat_activities
from iati_refresher.stages.lakify import cli_lakify, iter_lake_entries, lakify_document, lakify_file, nest_activity
from iati_refresher.storage import BlobStorageError, LocalBlobStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LAKE = FIXTURES / "lakify"


@pytest.fixture(scope="module")
def entry():
    (only,) = list(iter_lake_entries(LAKE / "format.xml"))
    return only


def test_json_follows_the_recursive_json_nest_format(entry):
    assert json.loads(entry.json) == {
        "iati-activity": [
            {
                "@default-currency": "EUR",
                "@xml:lang": "en",
                "@{http://ext.example.org/ns}flag": "yes",
                # text after a comment anywhere below floats up to elements with blank text
                "text()": "floating text",
                "iati-identifier": [{"text()": "  LK-1  "}],  # raw, unstripped
                "title": [
                    {"narrative": [{"text()": "  Keep my spaces "}, {"@xml:lang": "fr", "text()": ""}]},
                    {"narrative": [{"text()": "Second title"}]},
                ],
                "sector": [{"@code": "1"}],
                "{http://ext.example.org/ns}programme": [{"@code": "P1", "text()": "Programme"}],
                "undeclared:note": [{"text()": "literal prefix"}],
                "description": [
                    {
                        "text()": "floating text",
                        "comment()": [{}, {"text()": " a remark "}],
                        "PI()": [{"text()": "now"}],
                    }
                ],
            }
        ]
    }


def test_json_keeps_non_ascii_and_child_order(entry):
    text = json.dumps(nest_activity(etree.fromstring("<iati-activity><b/><a>é</a><b/></iati-activity>")))
    assert json.loads(text) == {"iati-activity": [{"b": [{}, {}], "a": [{"text()": "é"}]}]}
    assert "\\u" not in entry.json
    keys = list(json.loads(entry.json)["iati-activity"][0])
    assert keys.index("iati-identifier") < keys.index("title") < keys.index("sector") < keys.index("description")


def test_comment_free_and_commented_activities_follow_the_same_rules(tmp_path):
    plain = '<iati-activity a="1"><title><narrative>x</narrative><narrative/></title><n><n>in</n></n></iati-activity>'
    commented = plain.replace("<title>", "<title><!--c-->")
    nested_plain = nest_activity(etree.fromstring(plain))["iati-activity"][0]
    nested_commented = nest_activity(etree.fromstring(commented))["iati-activity"][0]
    assert nested_commented["title"][0].pop("comment()") == [{"text()": "c"}]
    assert nested_plain == nested_commented
    # an element nested in one of the same name lends its text to the outer one
    assert nested_plain["n"] == [{"text()": "in", "n": [{"text()": "in"}]}]


def test_xml_is_the_element_alone_with_namespaces_and_no_declaration(entry):
    xml = entry.xml.decode("utf-8")
    assert xml.startswith('<iati-activity xmlns:ext="http://ext.example.org/ns" default-currency="EUR"')
    assert xml.endswith("</iati-activity>")  # no tail whitespace
    assert "<?xml" not in xml
    reparsed = etree.fromstring(entry.xml, etree.XMLParser(recover=True))
    assert reparsed.find("iati-identifier").text == "  LK-1  "
    assert "<!-- a remark -->" in xml
    assert "<?page-break now?>" in xml


def test_non_ascii_is_written_as_utf8(tmp_path):
    path = tmp_path / "latin1.xml"
    path.write_bytes(
        '<?xml version="1.0" encoding="ISO-8859-1"?><iati-activities><iati-activity>'
        "<iati-identifier>É-1</iati-identifier><title><narrative>Café</narrative></title>"
        "</iati-activity></iati-activities>".encode("latin-1")
    )
    (only,) = list(iter_lake_entries(path))
    assert only.identifier == "É-1"
    assert "<narrative>Café</narrative>".encode() in only.xml
    assert json.loads(only.json)["iati-activity"][0]["title"][0]["narrative"][0]["text()"] == "Café"


def test_identifiers_duplicates_and_missing_identifiers():
    entries = list(iter_lake_entries(LAKE / "duplicates.xml"))
    assert [(e.identifier, e.occurrence) for e in entries] == [
        ("DUP-1", 0),
        ("DUP-1", 1),
        ("ODD-2", 0),  # comment ignored, CR removed: the identifier rule shared with flatten
        ("DUP-1", 2),
    ]
    narratives = [json.loads(e.json)["iati-activity"][0].get("title") for e in entries]
    assert narratives[0] == [{"narrative": [{"text()": "first"}]}]
    assert narratives[3] == [{"narrative": [{"text()": "third"}]}]


def test_lake_identifiers_match_flattened_identifiers():
    flattened = [a["iati_identifier"] for a in iter_flat_activities(LAKE / "duplicates.xml") if "iati_identifier" in a]
    assert flattened == [e.identifier for e in iter_lake_entries(LAKE / "duplicates.xml")]


def test_not_iati_and_hostile_files_raise(tmp_path):
    with pytest.raises(NotIatiError):
        list(iter_lake_entries(FIXTURES / "flatten" / "not-iati.xml"))
    hostile = tmp_path / "hostile.xml"
    hostile.write_text('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><iati-activities/>')
    with pytest.raises(XmlRefused):
        list(iter_lake_entries(hostile))


def test_lakify_file_writes_blobs_named_like_the_lake(tmp_path):
    counts = lakify_file(LAKE / "duplicates.xml", tmp_path)
    assert counts == {"activities": 4, "skipped_no_identifier": 2, "duplicates": 2}
    sha = identifier_hash("DUP-1")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {f"{sha}.xml", f"{sha}.json", f"{sha}--1.json", f"{sha}--2.xml"} <= set(names)
    assert len(names) == 8


def test_cli_lakify(tmp_path):
    err = io.StringIO()
    assert cli_lakify(str(LAKE / "duplicates.xml"), str(tmp_path / "out"), err, document_id="doc") == 0
    assert "4 activities" in err.getvalue()
    assert len(list((tmp_path / "out" / "doc").iterdir())) == 8
    err = io.StringIO()
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    assert cli_lakify(str(empty), str(tmp_path / "out2"), err) == 1
    assert "not well-formed XML" in err.getvalue()


# --- the stage function ---------------------------------------------------------------------


class RemoteLikeStore:
    """A store that is not a local directory (so uploads go through the thread pool)."""

    def __init__(self, root: Path, fail_on: str | None = None):
        self._local = LocalBlobStore(root)
        self._fail_on = fail_on
        self.uploaded: list[str] = []

    def put_bytes(self, container: str, name: str, data: bytes) -> None:
        if container == self._fail_on:
            raise BlobStorageError("service unavailable")
        self.uploaded.append(name)
        self._local.put_bytes(container, name, data)

    def __getattr__(self, attribute: str):
        return getattr(self._local, attribute)


@pytest.fixture
def store(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_lakify_document_writes_every_entry_and_removes_stale_blobs(tmp_path, kind):
    store = LocalBlobStore(tmp_path / "blobs") if kind == "local" else RemoteLikeStore(tmp_path / "blobs")
    store.put_file("clean", "h2.xml", LAKE / "duplicates.xml")
    store.put_bytes("lake", "doc/0000stale.xml", b"<old/>")
    store.put_bytes("lake", "other/keep.xml", b"<other/>")
    outcome = lakify_document({"id": "doc", "hash": "h2"}, store, Settings(lake_upload_threads=3))
    assert outcome.status == "ok"
    assert outcome.data == {"activities": 4, "skipped_no_identifier": 2, "duplicates": 2}
    expected = {
        lake_name("doc", identifier, occurrence, ext)
        for identifier, occurrence in [("DUP-1", 0), ("DUP-1", 1), ("DUP-1", 2), ("ODD-2", 0)]
        for ext in ("xml", "json")
    }
    assert set(store.list("lake", "doc/")) == expected
    assert store.exists("lake", "other/keep.xml")
    second = json.loads(store.get_bytes("lake", lake_name("doc", "DUP-1", 1, "json")))
    assert second["iati-activity"][0]["title"] == [{"narrative": [{"text()": "second"}]}]
    assert store.get_bytes("lake", lake_name("doc", "ODD-2", 0, "xml")).startswith(b"<iati-activity>")
    if kind == "remote":
        assert expected <= set(store.uploaded)


def test_lakify_document_outcomes_for_expected_problems(store):
    store.put_file("clean", "org.xml", FIXTURES / "flatten" / "not-iati.xml")
    store.put_bytes("clean", "empty.xml", b"")
    store.put_bytes("clean", "doctype.xml", b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x"><iati-activities/>')
    settings = Settings()
    outcomes = {
        name: lakify_document({"id": "d", "hash": name}, store, settings)
        for name in ("missing", "org", "empty", "doctype")
    }
    assert (outcomes["missing"].status, outcomes["missing"].code, outcomes["missing"].retryable) == (
        "failed",
        "clean_missing",
        False,
    )
    assert (outcomes["org"].status, outcomes["org"].code) == ("skipped", "not_iati")
    assert (outcomes["empty"].status, outcomes["empty"].code, outcomes["empty"].retryable) == (
        "failed",
        "parse_error",
        False,
    )
    assert (outcomes["doctype"].status, outcomes["doctype"].code) == ("skipped", "doctype_refused")
    assert list(store.list("lake")) == []


class FailingLocalStore(LocalBlobStore):
    def put_bytes(self, container, name, data):
        if container == "lake":
            raise BlobStorageError("disk full")
        super().put_bytes(container, name, data)


@pytest.mark.parametrize(("kind", "threads"), [("local", 8), ("remote", 0), ("remote", 2)])
def test_lakify_document_storage_failure_is_retryable(tmp_path, kind, threads):
    if kind == "local":
        store = FailingLocalStore(tmp_path / "blobs")
    else:
        store = RemoteLikeStore(tmp_path / "blobs", fail_on="lake")
    store.put_bytes("clean", "h.xml", (LAKE / "duplicates.xml").read_bytes())
    outcome = lakify_document({"id": "d", "hash": "h"}, store, Settings(lake_upload_threads=threads))
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "storage_error", True)


def test_iati_xml_is_written_the_lxml_6_way(tmp_path):
    # U3 (docs/DEVIATIONS.md): non-ASCII attribute values as UTF-8, an empty CDATA as <x></x>
    path = tmp_path / "u3.xml"
    path.write_bytes(
        '<iati-activities><iati-activity a="caf\u00e9"><iati-identifier>A</iati-identifier>'
        "<x><![CDATA[]]></x></iati-activity></iati-activities>".encode()
    )
    (entry,) = iter_lake_entries(path)
    assert (
        entry.xml == '<iati-activity a="caf\u00e9"><iati-identifier>A</iati-identifier><x></x></iati-activity>'.encode()
    )
