"""Building Solr documents exactly as the reference did (pure functions of stages/index.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from iati_refresher.iati.identifiers import identifier_hash
from iati_refresher.solr_client import JsonDoc
from iati_refresher.stages import index
from iati_refresher.stages.index import (
    activity_documents,
    activity_identifier,
    doc_id,
    drop_empty,
    explode,
    jsonb_order,
    location_latlon,
    location_point_latlon,
)

# The reference's own explode cases (its unit tests asserted these ids).
EXPLODE_CASES = [
    {
        "element": "transaction",
        "activity": {"transaction_sector_code": 1, "transaction_value": [100, 200], "iati_identifier": "ID"},
        "items": [{"transaction_value": 100, "transaction_sector_code": 1}, {"transaction_value": 200}],
        "expected": [
            {
                "transaction_value": 100,
                "transaction_sector_code": 1,
                "iati_identifier": "ID",
                "id": "8c9c0d8144b6a0a68b85d0d672c10f52afe290fc",
            },
            {"transaction_value": 200, "iati_identifier": "ID", "id": "721c2cd56dedbf5b8e11e21464bc381084ef70fb"},
        ],
    },
    {
        "element": "transaction",
        "activity": {"transaction_value": [100, 100], "iati_identifier": "ID"},
        "items": [{"transaction_value": 100}, {"transaction_value": 100}],
        "expected": [
            {"transaction_value": 100, "iati_identifier": "ID", "id": "8deb2daf9d100142370b844168e08e312fe400aa"},
            {"transaction_value": 100, "iati_identifier": "ID", "id": "71f347cd714d5fc249367dfbe5979fa33f9c0e14"},
        ],
    },
]

LATLON_CASES = [("1 1", "1.0,1.0"), ("1 1000", None)]


@pytest.mark.parametrize("case", EXPLODE_CASES, ids=["per-item-fields", "identical-items"])
def test_explode_matches_the_reference_cases(case):
    assert explode(case["activity"], case["element"], case["items"]) == case["expected"]


def test_explode_ids_depend_on_key_order_and_index():
    activity = {"iati_identifier": "ID", "id": "doc--h--0"}
    items = [{"budget_value": "1", "budget_type": "1"}]
    reordered = [{"budget_type": "1", "budget_value": "1"}]
    first = explode(activity, "budget", items)[0]["id"]
    assert first != explode(activity, "budget", reordered)[0]["id"]
    assert (
        first
        == hashlib.sha1(
            ('{"iati_identifier": "ID", "id": "doc--h--0", "budget_value": "1", "budget_type": "1"}' + "0").encode()
        ).hexdigest()
    )


def test_explode_strips_the_elements_prefix_and_the_lake_fields():
    activity = {
        "iati_identifier": "ID",
        "budget_not_provided": "1",
        "budget_value": ["1", "2"],
        "transaction_value": "5",
        "iati_xml": "<iati-activity/>",
        "iati_json": "{}",
        "id": "a",
    }
    (doc,) = explode(activity, "budget", [{"budget_value": "1"}])
    # budget_not_provided starts with "budget_": the reference dropped it from budget documents too
    assert set(doc) == {"iati_identifier", "transaction_value", "budget_value", "id"}
    assert doc["budget_value"] == "1"


@pytest.mark.parametrize(("pos", "expected"), LATLON_CASES)
def test_latlon_reference_cases(pos, expected):
    assert location_latlon(pos) == expected


@pytest.mark.parametrize(
    ("pos", "expected"),
    [
        ("-90 180", "-90.0,180.0"),
        ("  51.5   -0.12 ", "51.5,-0.12"),
        ("0.0000001 2", "1e-07,2.0"),
        ("90.1 0", None),
        ("0 -180.5", None),
        ("1 2 3", None),
        ("1", None),
        ("nan 1", None),
        ("inf 1", None),
        ("a b", None),
        ("", None),
    ],
)
def test_latlon_validation(pos, expected):
    assert location_latlon(pos) == expected


def test_location_point_latlon_is_always_a_list():
    # one point is a list too: the exploded ids hash the document, and the reference built a list
    assert location_point_latlon("1 2") == ["1.0,2.0"]
    assert location_point_latlon(["1 2", "bad", "3 4"]) == ["1.0,2.0", "3.0,4.0"]
    assert location_point_latlon(["bad"]) is None
    assert location_point_latlon("bad") is None


def test_jsonb_order_is_length_then_bytes_at_every_level():
    value = {"bb": 1, "a": 2, "ab": 3, "@budget": [{"budget_value": 1, "budget_type": 2}], "é": 4, "z": 5}
    ordered = jsonb_order(value)
    assert list(ordered) == ["a", "z", "ab", "bb", "é", "@budget"]  # "é" is two bytes in UTF-8
    assert list(ordered["@budget"][0]) == ["budget_type", "budget_value"]


def test_activity_identifier_uses_the_first_value():
    assert activity_identifier({"iati_identifier": "  A-1 \n"}) == "A-1"
    assert activity_identifier({"iati_identifier": ["A-1", "A-2"]}) == "A-1"
    assert activity_identifier({"iati_identifier": ["", "A-2"]}) == "A-2"
    assert activity_identifier({}) == ""
    assert activity_identifier({"iati_identifier": ""}) == ""


def test_drop_empty_only_drops_top_level_empty_strings():
    assert drop_empty({"a": "", "b": ["", "x"], "c": 0, "d": "x"}) == {"b": ["", "x"], "c": 0, "d": "x"}


FLAT = {
    "dataset_version": "2.03",
    "iati_identifier": "XM-1-A",
    "title_narrative": ["T", "T2"],
    "capital_spend_percentage": "",
    "location_point_pos": ["1 2", "95 2"],
    "transaction_value": ["10", "20"],
    "transaction_ref": "R1",
    "budget_value": "5",
    "@transaction": [{"transaction_value": "10", "transaction_ref": "R1"}, {"transaction_value": "20"}],
    "@budget": [{"budget_value": "5", "budget_type": ""}],
}


def test_activity_document_fields():
    built = activity_documents(
        FLAT, document_id="doc-1", document_hash="h1", occurrence=1, iati_xml="<x/>", iati_json='{"a": 1}'
    )
    activity = built.activity
    assert activity["id"] == f"doc-1--{identifier_hash('XM-1-A')}--1"
    assert activity["iati_activities_document_id"] == "doc-1"
    assert activity["iati_activities_document_hash"] == "h1"
    assert activity["location_point_latlon"] == ["1.0,2.0"]
    assert activity["iati_xml"] == "<x/>"
    assert activity["iati_json"] == '{"a": 1}'
    assert "capital_spend_percentage" not in activity  # "" would be rejected by a pdouble field
    assert not any(key.startswith("@") for key in activity)
    assert activity["transaction_value"] == ["10", "20"]  # the activity keeps the aggregates


def test_exploded_documents():
    built = activity_documents(FLAT, document_id="doc-1", document_hash="h1", occurrence=0, iati_xml="<x/>")
    assert len(built.transaction) == 2
    assert len(built.budget) == 1
    first, second = built.transaction
    assert first["transaction_value"] == "10"
    assert first["transaction_ref"] == "R1"
    assert "transaction_ref" not in second  # an item's fields only, never the activity's list
    assert first["budget_value"] == "5"  # other elements' aggregates stay
    assert first["iati_activities_document_id"] == "doc-1"
    assert "iati_xml" not in first
    assert first["id"] != second["id"]
    (budget,) = built.budget
    assert "budget_type" not in budget  # "" dropped at add time
    assert "transaction_value" in budget
    roles = [role for role, _ in built.by_role()]
    assert roles == ["activity", "transaction", "transaction", "budget"]


def test_exploded_ids_hash_the_document_before_empty_values_are_dropped():
    built = activity_documents(FLAT, document_id="doc-1", document_hash="h1", occurrence=0)
    (budget,) = built.budget
    # The reference hashed the document with its "" values and the activity id still in it.
    reference = jsonb_order({k: v for k, v in FLAT.items() if not k.startswith("@")})
    reference.update(
        iati_activities_document_id="doc-1",
        iati_activities_document_hash="h1",
        location_point_latlon=["1.0,2.0"],
        id=f"doc-1--{identifier_hash('XM-1-A')}--0",
    )
    base = {k: v for k, v in reference.items() if not k.startswith("budget_")}
    doc = {**base, **jsonb_order(FLAT["@budget"][0])}
    assert budget["id"] == hashlib.sha1((json.dumps(doc) + "0").encode()).hexdigest()


def test_list_identifier_is_reduced_to_the_first_for_ids_and_field():
    flat = {"iati_identifier": ["A", "B"], "title_narrative": "t"}
    built = activity_documents(flat, document_id="d", document_hash="h", occurrence=0)
    assert built.activity["iati_identifier"] == "A"
    assert built.activity["id"] == f"d--{identifier_hash('A')}--0"


def test_ids_do_not_depend_on_the_lake_text():
    with_lake = activity_documents(
        FLAT, document_id="d", document_hash="h", occurrence=0, iati_xml="<a/>", iati_json="{}"
    )
    without = activity_documents(FLAT, document_id="d", document_hash="h", occurrence=0)
    assert [d["id"] for _, d in with_lake.by_role()] == [d["id"] for _, d in without.by_role()]
    assert "iati_xml" not in without.activity


def test_the_flattened_input_is_not_modified():
    flat = json.loads(json.dumps(FLAT))
    activity_documents(flat, document_id="d", document_hash="h", occurrence=0)
    assert flat == FLAT


def test_a_single_point_activity_explodes_with_the_ids_of_a_list_valued_latlon():
    activity = {"iati_identifier": "A-1", "location_point_pos": "1 2", "@transaction": [{"transaction_value": "5"}]}
    built = activity_documents(activity, document_id="d", document_hash="h", occurrence=0)
    assert built.activity["location_point_latlon"] == ["1.0,2.0"]
    base = {
        "iati_identifier": "A-1",
        "location_point_pos": "1 2",
        "iati_activities_document_id": "d",
        "iati_activities_document_hash": "h",
        "location_point_latlon": ["1.0,2.0"],
        "id": built.activity["id"],
    }
    expected = hashlib.sha1((json.dumps({**base, "transaction_value": "5"}) + "0").encode()).hexdigest()
    assert built.transaction[0]["id"] == expected


@pytest.mark.parametrize("writer", ["compiled", "json"])
@pytest.mark.parametrize("value", ["plain", "café", "water\x01 point", "emoji \U0001f600", ""])
def test_serialised_exploded_documents_are_the_same_documents(value, writer, monkeypatch):
    if writer == "json":  # the fallback when the compiled module is not built
        monkeypatch.setattr(index, "json_members", None)
        monkeypatch.setattr(index, "json_text", None)
    else:
        assert index.json_members is not None
    activity = {
        "iati_identifier": "A-1",
        "title_narrative": ["t", value],
        "description_narrative": value,
        "@transaction": [{"transaction_value": "5", "transaction_note": value}, {}, {"iati_identifier": "x"}],
        "@budget": [{"budget_value": value}],
    }
    plain = activity_documents(activity, document_id="d", document_hash="h", occurrence=0)
    fast = activity_documents(activity, document_id="d", document_hash="h", occurrence=0, serialised=True)
    for role in ("transaction", "budget"):

        def pairs_once(pairs):
            keys = [k for k, _ in pairs]
            assert len(keys) == len(set(keys)), f"a key given twice is two values for Solr: {keys}"
            return dict(pairs)

        sent = [
            json.loads(d.text(), object_pairs_hook=pairs_once) if isinstance(d, JsonDoc) else d
            for d in getattr(fast, role)
        ]
        assert sent == getattr(plain, role)
        assert [doc_id(d) for d in getattr(fast, role)] == [d["id"] for d in getattr(plain, role)]
    # the careful path is taken whenever something must be dropped or cleaned
    if value in ("", "water\x01 point", "emoji \U0001f600"):
        assert not any(isinstance(d, JsonDoc) for d in fast.transaction[:1])
    else:
        assert isinstance(fast.transaction[0], JsonDoc)
