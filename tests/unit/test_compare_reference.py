"""bench/compare_reference.py: pairing documents and classifying their differences.

The reference side needs a checkout of IATI/refresher (never part of this repository), so
these tests feed the comparison documents written here, as both sides would send them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("compare_reference", BENCH / "compare_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group(activity: dict, transactions: list[dict] | None = None) -> dict:
    return {"activity": activity, "transaction": transactions or [], "budget": []}


ACTIVITY = {
    "id": "d--h--0",
    "iati_identifier": "A-1",
    "title_narrative": ["Water"],
    "activity_date_iso_date": ["2023-07-17T07:05:08.000Z"],
    "iati_xml": "<iati-activity/>",
}


def run(compare: ModuleType, ours: list[dict], reference: list[dict]):
    tally = compare.Tally()
    compare.compare_file("f.xml", {"documents": ours}, {"documents": reference}, tally)
    return tally


def test_identical_documents_are_counted_identical(compare: ModuleType) -> None:
    tally = run(compare, [group(dict(ACTIVITY))], [group(dict(ACTIVITY))])
    assert (tally.compared["activity"], tally.identical["activity"], tally.unlisted_count()) == (1, 1, 0)


def test_a_utc_conversion_and_a_tail_are_listed_deviations(compare: ModuleType) -> None:
    reference = {**ACTIVITY, "activity_date_iso_date": ["2023-07-17T08:05:08.000Z"], "iati_xml": "<iati-activity/>\n  "}
    tally = run(compare, [group(dict(ACTIVITY))], [group(reference)])
    assert tally.unlisted_count() == 0
    assert set(tally.classes["activity"]) == {"utc_offset", "tail_whitespace"}


def test_any_other_difference_is_unlisted(compare: ModuleType) -> None:
    reference = {**ACTIVITY, "title_narrative": ["Water points"]}
    tally = run(compare, [group(dict(ACTIVITY))], [group(reference)])
    assert tally.unlisted_count() == 1
    assert "title_narrative" in tally.unlisted["activity"][0]


def test_an_exploded_id_is_explained_only_by_a_listed_difference(compare: ModuleType) -> None:
    ours_tx = {"id": "t1", "transaction_value": "5", "activity_date_iso_date": ["2023-07-17T07:05:08.000Z"]}
    shifted = {"id": "t2", "transaction_value": "5", "activity_date_iso_date": ["2023-07-17T08:05:08.000Z"]}
    explained = run(compare, [group(dict(ACTIVITY), [ours_tx])], [group(dict(ACTIVITY), [shifted])])
    assert explained.unlisted_count() == 0 and explained.classes["transaction"]["explode_id"] == 1

    same_fields = {**ours_tx, "id": "t2"}  # nothing else differs: the id has no listed reason
    unexplained = run(compare, [group(dict(ACTIVITY), [ours_tx])], [group(dict(ACTIVITY), [same_fields])])
    assert len(unexplained.unlisted["transaction"]) == 1


def test_a_document_built_by_one_side_only_is_unlisted(compare: ModuleType) -> None:
    tally = run(compare, [group(dict(ACTIVITY)), group({**ACTIVITY, "id": "d--h2--0"})], [group(dict(ACTIVITY))])
    assert tally.only_ours["activity"] == 1 and tally.unlisted_count() == 1


def test_keys_come_back_in_postgres_jsonb_order(compare: ModuleType) -> None:
    assert list(compare.harness.jsonb_roundtrip({"bb": 1, "a": {"zz": 1, "y": 2}, "é": 3})) == ["a", "bb", "é"]
    assert list(compare.harness.jsonb_roundtrip({"a": {"zz": 1, "y": 2}})["a"]) == ["y", "zz"]


def test_the_lxml_4_serialisation_of_an_activity_is_a_listed_deviation(compare: ModuleType) -> None:
    # U3: lxml 4.9 (the reference) escaped non-ASCII in attribute values and self-closed an
    # element holding an empty CDATA section; lxml 6 does neither. Same infoset.
    ours = '<iati-activity a="caf\u00e9"><x></x><t>caf\u00e9</t></iati-activity>'
    reference = '<iati-activity a="caf&#xE9;"><x/><t>caf\u00e9</t></iati-activity>'
    assert compare._xml_class(ours, reference) == "xml_serialisation"
    assert compare._xml_class(ours, reference.replace("<t>", "<t>other ")) is None
