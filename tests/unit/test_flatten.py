"""Flatten: naming and value rules, encodings, hostile input and the stage function."""

from __future__ import annotations

import codecs
import io
import json
import socket
import threading
from pathlib import Path

import pytest
from lxml import etree

from iati_refresher.iati.identifiers import identifier_of
from iati_refresher.iati.xml import XmlRefused
from iati_refresher.settings import Settings
from iati_refresher.stages.flatten import (
    NotIatiError,
    cli_flatten,
    flat_blob_name,
    flatten_document,
    flatten_file,
    iter_flat_activities,
)
from iati_refresher.storage import BlobStorageError, LocalBlobStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "flatten"


def flat(name: str) -> list[dict]:
    return list(iter_flat_activities(FIXTURES / name))


# --- naming -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named() -> dict:
    (activity,) = flat("naming.xml")
    return activity


def test_dataset_fields_are_copied_from_the_root(named):
    assert named["dataset_version"] == "2.03"
    assert named["dataset_generated_datetime"] == "2024-03-01T10:00:00.000Z"
    assert named["dataset_linked_data_default"] == "http://data.example.org/"


def test_activity_attributes_have_no_prefix_and_xml_lang_becomes_xml_lang(named):
    assert named["default_currency"] == "EUR"
    assert named["xml_lang"] == "fr"
    assert named["reporting_org_narrative_xml_lang"] == "en"
    assert named["reporting_org_narrative"] == "Example Org"


def test_extension_namespace_declared_on_the_activity_uses_its_prefix(named):
    assert named["ext_flag"] == "yes"
    assert named["ext_programme_ext_code"] == "P1"
    assert named["ext_programme_ext_name"] == "Ext programme"


def test_namespace_declared_below_the_activity_uses_the_prefix_written_there(named):
    # the reference produced "budget_{http_//low.example.org/ns}detail_..." here
    assert named["budget_low_detail_low_kind"] == "k"
    assert named["budget_low_detail_low_amount"] == "12"
    assert not any(key.startswith("budget_{http_//low") for key in named)


def test_default_namespace_below_the_activity_keeps_the_reference_clark_form(named):
    key = "budget_{http_//default.example.org/ns}fin_{http_//default.example.org/ns}total"
    assert named[key] == "5"


def test_undeclared_prefix_is_kept_literally(named):
    assert named["budget_undeclared_thing"] == "raw"


def test_undeclared_extension_prefix_matches_declared_one(tmp_path):
    body = """<budget status="2"><bigorg:bigorg-finance><bigorg:applicant>TEST1</bigorg:applicant>
        </bigorg:bigorg-finance></budget>"""
    declared = tmp_path / "declared.xml"
    declared.write_text(
        f'<iati-activities><iati-activity xmlns:bigorg="http://bigorg.org/">{body}</iati-activity></iati-activities>'
    )
    undeclared = tmp_path / "undeclared.xml"
    undeclared.write_text(f"<iati-activities><iati-activity>{body}</iati-activity></iati-activities>")
    a, b = next(iter_flat_activities(declared)), next(iter_flat_activities(undeclared))
    assert a == b
    assert a["budget_bigorg_bigorg_finance_bigorg_applicant"] == "TEST1"


def test_a_prefix_with_a_hyphen_becomes_an_underscore_like_the_rest_of_the_name(tmp_path):
    # the reference replaced '-' in the whole field name: iati_activities_version, not iati-activities_version
    path = tmp_path / "hyphen.xml"
    path.write_text(
        '<iati-activities xmlns:iati-activities="http://iati.example/a" xmlns:interactions-ngoaidmap="http://n.example/">'
        '<iati-activity iati-activities:version="2.03"><iati-identifier>A-1</iati-identifier>'
        "<interactions-ngoaidmap:project-url>u</interactions-ngoaidmap:project-url>"
        '<budget><low-ns:detail xmlns:low-ns="http://low.example/">7</low-ns:detail></budget>'
        "</iati-activity></iati-activities>"
    )
    (activity,) = iter_flat_activities(path)
    assert activity["iati_activities_version"] == "2.03"
    assert activity["interactions_ngoaidmap_project_url"] == "u"
    assert activity["budget_low_ns_detail"] == "7"
    assert not [key for key in activity if "-" in key]


def test_the_first_prefix_declared_for_a_namespace_names_its_fields(tmp_path):
    path = tmp_path / "two-prefixes.xml"
    path.write_text(
        '<iati-activities><iati-activity xmlns:first="http://x.example/" xmlns:second="http://x.example/">'
        "<iati-identifier>A-1</iati-identifier><second:thing>t</second:thing></iati-activity></iati-activities>"
    )
    (activity,) = iter_flat_activities(path)
    assert activity["first_thing"] == "t"


# --- values -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valued() -> list[dict]:
    return flat("values.xml")


def test_values_are_stripped_strings_and_blank_text_is_skipped(valued):
    first = valued[0]
    assert first["dataset_version"] == "2.02"
    assert first["last_updated_datetime"] == "2023-01-02T03:04:05.000Z"
    # the blank Spanish narrative gives no value, but its xml:lang is kept
    assert first["title_narrative"] == ["Padded title", "Título   continued"]
    assert first["title_narrative_xml_lang"] == ["es", "pt"]


def test_blank_attributes_are_kept_and_lists_are_not_aligned(valued):
    first = valued[0]
    assert first["participating_org_ref"] == ["", "GB-1"]
    assert first["sector_code"] == ["111", "112", "113"]
    assert first["sector_percentage"] == ["60", ""]


def test_comments_and_processing_instructions_are_ignored(valued):
    first = valued[0]
    assert "999" not in first["sector_code"]
    assert not any("some" in key for key in first)
    values = [v for value in first.values() for v in (value if isinstance(value, list) else [value])]
    assert "data" not in values  # the PI's content


def test_identifier_is_normalised_and_single_valued(valued):
    # text joined across the comment, stripped, CR and LF removed; the second identifier ignored
    assert valued[0]["iati_identifier"] == "AB-12"
    assert "iati_identifier" not in valued[1]


def test_identifier_field_equals_the_shared_identifier_rule():
    tree = etree.parse(str(FIXTURES / "values.xml"))
    for element, flattened in zip(tree.getroot(), flat("values.xml"), strict=True):
        assert flattened.get("iati_identifier", "") == identifier_of(element)


def test_transactions_and_budgets_become_sub_lists_and_stay_aggregated(valued):
    first = valued[0]
    assert first["@transaction"] == [
        {
            "transaction_ref": "t1",
            "transaction_transaction_type_code": "1",
            "transaction_transaction_date_iso_date": "2020-01-31T00:00:00.000Z",
            "transaction_value_currency": "USD",
            "transaction_value_value_date": "2020-01-31T00:00:00.000Z",
            "transaction_value": "100",
            "transaction_description_narrative": ["First", "Erste"],
        },
        {"transaction_transaction_type_code": "3", "transaction_value": "200"},
    ]
    assert first["@budget"] == [{"budget_type": "1", "budget_value": "5"}]
    assert first["transaction_value"] == ["100", "200"]
    assert first["transaction_description_narrative"] == ["First", "Erste"]
    # an activity-level <transaction-type> is not a transaction
    assert first["transaction_type_code"] == "9"
    assert "@transaction" not in valued[1]


def test_dates_are_normalised_and_unusable_ones_dropped():
    (activity,) = flat("dates.xml")
    assert activity["last_updated_datetime"] == "2023-07-17T07:05:08.160Z"
    assert activity["activity_date_iso_date"] == [
        "2014-01-01T00:00:00.000Z",
        "2014-05-01T00:00:00.000Z",
        "2014-05-06T00:00:00.000Z",
        "2023-07-17T00:00:00.000Z",
        "0201-01-01T00:00:00.000Z",
    ]
    assert activity["activity_date_type"] == ["1", "2", "3", "4", "1", "2", "3", "4"]
    assert activity["fss_extraction_date"] == "2014-05-06T00:00:00.000Z"
    assert activity["@budget"] == [{"budget_value_value_date": "2023-01-02T00:30:00.000Z", "budget_value": "1"}]


# --- not IATI, broken and hostile input ------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        '<iati-organisations version="2.03"><iati-organisation/></iati-organisations>',
        '<iati-activities xmlns="http://example.org/"><iati-activity/></iati-activities>',
        "<wrapper><iati-activities><iati-activity/></iati-activities></wrapper>",
        "<iati-activity><iati-identifier>X</iati-identifier></iati-activity>",
        "not xml at all",
    ],
)
def test_a_root_other_than_iati_activities_raises_not_iati(tmp_path, content):
    path = tmp_path / "doc.xml"
    path.write_text(content)
    with pytest.raises(NotIatiError):
        list(iter_flat_activities(path))


def test_organisation_fixture_is_not_iati():
    with pytest.raises(NotIatiError):
        flat("not-iati.xml")


def test_broken_trailing_tag_is_recovered_and_counted(tmp_path):
    (activity,) = flat("broken-trailing-tag.xml")
    assert activity == {"dataset_version": "2.03", "iati_identifier": "BROKEN-1", "result_type": "1"}
    result = flatten_file(FIXTURES / "broken-trailing-tag.xml", tmp_path / "out.jsonl")
    assert result.activities == 1
    assert result.recovered_errors > 0


def test_truncated_file_keeps_the_activities_read_so_far():
    activities = flat("truncated.xml")
    assert [a.get("iati_identifier") for a in activities] == ["T-1", "T-2"]
    assert activities[0]["title_narrative"] == "Complete"


def test_empty_file_is_a_syntax_error(tmp_path):
    path = tmp_path / "empty.xml"
    path.write_bytes(b"")
    with pytest.raises(etree.XMLSyntaxError):
        list(iter_flat_activities(path))


def _hostile_documents(tmp_path: Path, port: int) -> dict[str, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    body = "<iati-activities><iati-activity><iati-identifier>&ent;</iati-identifier></iati-activity></iati-activities>"
    return {
        "external_file": f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ent SYSTEM "file://{secret}">]>{body}',
        "external_network": f'<!DOCTYPE x [<!ENTITY ent SYSTEM "http://127.0.0.1:{port}/x">]>{body}',
        "expansion": (
            '<!DOCTYPE x [<!ENTITY a "AAAAAAAAAA"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY ent "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>' + body
        ),
        "external_dtd": f'<!DOCTYPE iati-activities SYSTEM "file://{secret}">{body.replace("&ent;", "X")}',
    }


@pytest.fixture
def listener():
    """A TCP listener that records whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.05)
    connected = threading.Event()
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connected.set()
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("kind", ["external_file", "external_network", "expansion", "external_dtd"])
def test_hostile_xml_is_refused_before_parsing(tmp_path, listener, kind):
    port, connected = listener
    path = tmp_path / f"{kind}.xml"
    path.write_text(_hostile_documents(tmp_path, port)[kind])
    with pytest.raises(XmlRefused) as refused:
        list(iter_flat_activities(path))
    assert refused.value.code == "doctype_refused"
    assert not connected.is_set()


@pytest.mark.parametrize("kind", ["external_file", "external_network", "expansion"])
def test_hostile_xml_gives_a_recorded_outcome_and_reads_nothing(tmp_path, listener, kind):
    port, connected = listener
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes("clean", "h.xml", _hostile_documents(tmp_path, port)[kind].encode())
    outcome = flatten_document({"id": "doc", "hash": "h"}, store, Settings())
    assert (outcome.status, outcome.code) == ("skipped", "doctype_refused")
    assert list(store.list("flat")) == []
    assert not connected.is_set()


# --- encodings ----------------------------------------------------------------------------

TEXT = "Café “quoted” — €5, naïve"
TEMPLATE = (
    '<iati-activities version="2.03"><iati-activity><iati-identifier>ENC-1</iati-identifier>'
    "<title><narrative>{text}</narrative></title></iati-activity></iati-activities>"
)


@pytest.mark.parametrize(
    ("label", "text", "data"),
    [
        (
            "latin-1 declared",
            "Café naïve ±",
            ('<?xml version="1.0" encoding="ISO-8859-1"?>' + TEMPLATE.format(text="Café naïve ±")).encode("latin-1"),
        ),
        ("windows-1252 undeclared", TEXT, TEMPLATE.format(text=TEXT).encode("cp1252")),
        ("utf-16 with BOM", TEXT, codecs.BOM_UTF16_LE + TEMPLATE.format(text=TEXT).encode("utf-16-le")),
        ("utf-8 with BOM", TEXT, codecs.BOM_UTF8 + TEMPLATE.format(text=TEXT).encode("utf-8")),
        (
            "utf-8 declared latin-1",
            TEXT,
            ('<?xml version="1.0" encoding="ISO-8859-1"?>' + TEMPLATE.format(text=TEXT)).encode("utf-8"),
        ),
    ],
)
def test_text_is_decoded_from_the_real_encoding(tmp_path, label, text, data):
    path = tmp_path / "doc.xml"
    path.write_bytes(data)
    (activity,) = list(iter_flat_activities(path))
    assert activity["title_narrative"] == text, label
    assert activity["iati_identifier"] == "ENC-1"


# --- files and the stage function -----------------------------------------------------------


def test_flatten_file_writes_one_json_line_per_activity(tmp_path):
    out = tmp_path / "out.jsonl"
    result = flatten_file(FIXTURES / "values.xml", out)
    raw = out.read_bytes()
    assert result.activities == 2
    assert result.bytes == len(raw)
    assert "Título".encode() in raw  # non-ASCII is written as UTF-8, not escaped
    lines = raw.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == flat("values.xml")


def test_cli_flatten_writes_json_lines_and_clear_errors(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert cli_flatten(str(FIXTURES / "naming.xml"), out, err) == 0
    assert [json.loads(line) for line in out.getvalue().splitlines()] == flat("naming.xml")
    assert err.getvalue() == ""
    for bad, expected in [
        (FIXTURES / "not-iati.xml", "not an IATI activities file"),
        (tmp_path / "missing.xml", "cannot read"),
    ]:
        out, err = io.StringIO(), io.StringIO()
        assert cli_flatten(str(bad), out, err) == 1
        assert expected in err.getvalue()
        assert str(bad) in err.getvalue()


@pytest.fixture
def store(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_flatten_document_stores_json_lines_and_a_manifest(store):
    store.put_file("clean", "h2.xml", FIXTURES / "values.xml")
    store.put_bytes("flat", flat_blob_name("doc", "h1"), b"{}\n")  # an older version
    store.put_bytes("flat", "doc/notes.txt", b"not ours")
    store.put_bytes("flat", flat_blob_name("other", "h1"), b"{}\n")  # another document
    outcome = flatten_document({"id": "doc", "hash": "h2", "url": "ignored"}, store, Settings())
    assert outcome.status == "ok"
    data = store.get_bytes("flat", "doc/h2.jsonl")
    manifest = {"format": "jsonl", "container": "flat", "blob": "doc/h2.jsonl", "activities": 2, "bytes": len(data)}
    assert outcome.data == {"activities": 2, "manifest": manifest}
    assert [json.loads(line) for line in data.decode().splitlines()] == flat("values.xml")
    assert sorted(store.list("flat")) == ["doc/h2.jsonl", "doc/notes.txt", "other/h1.jsonl"]


def test_flatten_document_with_no_activities(store):
    store.put_bytes("clean", "h.xml", b'<iati-activities version="2.03"></iati-activities>')
    outcome = flatten_document({"id": "doc", "hash": "h"}, store, Settings())
    assert outcome.status == "ok"
    assert outcome.data["activities"] == 0
    assert outcome.data["manifest"]["activities"] == 0
    assert store.get_bytes("flat", "doc/h.jsonl") == b""


def test_flatten_document_uses_the_configured_containers(store):
    settings = Settings(clean_container="c2", flat_container="f2")
    store.put_file("c2", "h.xml", FIXTURES / "naming.xml")
    outcome = flatten_document({"id": "d", "hash": "h"}, store, settings)
    assert outcome.status == "ok"
    assert outcome.data["manifest"]["container"] == "f2"
    assert list(store.list("f2")) == ["d/h.jsonl"]


def test_flatten_document_outcomes_for_expected_problems(store):
    store.put_file("clean", "org.xml", FIXTURES / "not-iati.xml")
    store.put_bytes("clean", "empty.xml", b"")
    settings = Settings()
    missing = flatten_document({"id": "d", "hash": "missing"}, store, settings)
    not_iati = flatten_document({"id": "d", "hash": "org"}, store, settings)
    empty = flatten_document({"id": "d", "hash": "empty"}, store, settings)
    assert (missing.status, missing.code, missing.retryable) == ("failed", "clean_missing", False)
    assert (not_iati.status, not_iati.code) == ("skipped", "not_iati")
    assert (empty.status, empty.code, empty.retryable) == ("failed", "parse_error", False)
    assert empty.message.startswith("Could not parse")
    assert list(store.list("flat")) == []


class FailingStore(LocalBlobStore):
    def put_file(self, container, name, path):
        raise BlobStorageError("service unavailable")


def test_flatten_document_storage_failure_is_retryable(tmp_path):
    store = FailingStore(tmp_path / "blobs")
    store.put_bytes("clean", "h.xml", (FIXTURES / "naming.xml").read_bytes())
    outcome = flatten_document({"id": "d", "hash": "h"}, store, Settings())
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "storage_error", True)


def test_text_split_by_a_processing_instruction_joins_up(tmp_path):
    path = tmp_path / "pi.xml"
    path.write_text(
        "<iati-activities><iati-activity><iati-identifier>P-<?pi x?>1</iati-identifier>"
        "<title><narrative>ab<?pi x?>cd</narrative></title></iati-activity></iati-activities>"
    )
    (activity,) = list(iter_flat_activities(path))
    assert activity["iati_identifier"] == "P-1"
    assert activity["title_narrative"] == "abcd"


def test_only_children_of_the_root_are_activities(tmp_path):
    path = tmp_path / "nested.xml"
    path.write_text(
        "<iati-activities>"
        "<wrapper><iati-activity><iati-identifier>NESTED</iati-identifier></iati-activity></wrapper>"
        "<iati-activity><iati-identifier>OUTER</iati-identifier>"
        "<other><iati-activity><iati-identifier>INNER</iati-identifier></iati-activity></other>"
        "</iati-activity></iati-activities>"
    )
    (activity,) = list(iter_flat_activities(path))
    assert activity["iati_identifier"] == "OUTER"
    # an activity-shaped element inside an activity is just part of it
    assert activity["other_iati_activity_iati_identifier"] == "INNER"


@pytest.mark.parametrize("kind", ["external_file", "external_network", "external_dtd"])
def test_parser_resolves_nothing_even_without_the_prolog_check(tmp_path, listener, monkeypatch, kind):
    """Defence in depth: were a DOCTYPE to get past check_prolog, nothing is fetched."""
    port, connected = listener
    path = tmp_path / f"{kind}.xml"
    path.write_text(_hostile_documents(tmp_path, port)[kind])
    monkeypatch.setattr("iati_refresher.stages.flatten.check_prolog", lambda *args, **kwargs: None)
    activities = list(iter_flat_activities(path))
    assert "TOP-SECRET-MARKER" not in json.dumps(activities)
    assert not connected.is_set()
