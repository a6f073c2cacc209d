"""The compiled tree walks give exactly what the Python walks give.

Flatten and lakify define their rules in Python (``stages/flatten.py``, ``stages/lakify.py``);
``iati/_compiled.pyx`` computes the same from libxml2's nodes.  Each fixture is read both ways
and compared as text, so a difference in key order, escaping or a dropped value fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iati_refresher.iati import accelerated
from iati_refresher.iati.xml import (
    IATI_ACTIVITIES,
    IATI_ACTIVITY,
    activities_root,
    iter_root_activities,
    safe_iterparse,
)
from iati_refresher.solr_client import needs_cleaning
from iati_refresher.stages import flatten, lakify

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = sorted(
    [
        *(FIXTURES / "compiled").glob("*.xml"),
        *(FIXTURES / "flatten").glob("*.xml"),
        *(FIXTURES / "lakify").glob("*.xml"),
    ]
)


def test_the_compiled_walks_are_built():
    # make deps builds them; a missing build would silently halve flatten's and lakify's speed
    assert accelerated.PROBLEM is None
    assert accelerated.compiled is not None


def _flattened(path: Path, activity_flattener) -> list[str]:
    original = flatten.FLATTEN_ACTIVITY
    flatten.FLATTEN_ACTIVITY = activity_flattener
    try:
        return [json.dumps(activity, ensure_ascii=False) for activity in flatten.iter_flat_activities(path)]
    finally:
        flatten.FLATTEN_ACTIVITY = original


def _parses(path: Path) -> bool:
    try:
        list(flatten.iter_flat_activities(path))
    except Exception:
        return False
    return True


@pytest.mark.parametrize("path", [p for p in CASES if _parses(p)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_flatten_is_the_same_compiled_or_not(path):
    python = _flattened(path, flatten._flatten_activity)
    compiled = _flattened(path, flatten._compiled_flatten_activity)
    assert python
    assert compiled == python


def _lake_texts(path: Path) -> list[tuple[str, str | None]]:
    """(the Python nest as JSON, the compiled nest or None when it hands over) per activity."""
    context = safe_iterparse(str(path), events=("start", "end"), tag=(IATI_ACTIVITIES, IATI_ACTIVITY), recover=True)
    events = iter(context)
    root = activities_root(events)
    assert accelerated.compiled is not None
    return [
        (json.dumps(lakify.nest_activity(activity), ensure_ascii=False), accelerated.compiled.nest_json(activity))
        for activity in iter_root_activities(events, root)
    ]


@pytest.mark.parametrize("path", [p for p in CASES if _parses(p)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lake_json_is_the_same_compiled_or_not(path):
    for python, compiled in _lake_texts(path):
        assert compiled is None or compiled == python


def test_the_compiled_nest_hands_over_only_what_needs_the_exact_rules():
    texts = _lake_texts(FIXTURES / "compiled" / "edge-cases.xml")
    handed_over = [
        json.loads(python)["iati-activity"][0]["iati-identifier"][0]["text()"].strip()
        for python, compiled in texts
        if compiled is None
    ]
    # XM-2: comments and a PI; XM-3: an element inside one of the same tag; XM-4: 65 distinct child tags
    assert handed_over == ["XM-2", "XM-3", "XM-4"]
    assert len(texts) == 6


@pytest.mark.parametrize("name", ["edge-cases.xml", "recovered.xml"])
def test_lake_entries_are_the_same_compiled_or_not(name, monkeypatch):
    path = FIXTURES / "compiled" / name
    compiled = list(lakify.iter_lake_entries(path))
    monkeypatch.setattr(lakify, "compiled", None)
    python = list(lakify.iter_lake_entries(path))
    assert compiled
    assert compiled == python


@pytest.mark.parametrize(
    "text",
    ["", "plain", 'quote " and \\ backslash', "\n\r\t\b\f\x01\x1f\x7f", "é ü 漢字 😀 \u2028\u2029", '<a b="&amp;"/>'],
)
def test_json_literal_is_json_dumps(text):
    assert accelerated.compiled is not None
    assert accelerated.compiled.json_literal(text.encode()) == json.dumps(text, ensure_ascii=False).encode()
    assert accelerated.compiled.json_literal(text.encode(), True) == json.dumps(text).encode()


@pytest.mark.parametrize("raw", [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])
def test_json_literal_refuses_what_is_not_utf8(raw):
    assert accelerated.compiled is not None
    assert accelerated.compiled.json_literal(raw, True) is None


def test_bundle_lines_are_the_same_compiled_or_not(monkeypatch):
    entries = list(lakify.iter_lake_entries(FIXTURES / "compiled" / "edge-cases.xml"))
    compiled = [lakify.bundle_line(e) for e in entries]
    monkeypatch.setattr(lakify, "compiled", None)
    assert [lakify.bundle_line(e) for e in entries] == compiled
    # a line splits into its five fields and the literals read back as the entry's texts
    identifier, occurrence, xml, text, _suspect = compiled[0].decode().rstrip("\n").split("\t")
    assert (json.loads(identifier), int(occurrence)) == (entries[0].identifier, entries[0].occurrence)
    assert (json.loads(xml).encode(), json.loads(text)) == (entries[0].xml, entries[0].json)
    # the cleaning flag says what needs_cleaning says of the literals
    for line in compiled:
        fields = line.decode().rstrip("\n").split("\t")
        assert fields[4] == ("1" if needs_cleaning(fields[2]) or needs_cleaning(fields[3]) else "0")


@pytest.mark.parametrize(
    ("text", "suspect"),
    [
        ("plain é", False),
        ("tab\tnewline\n", False),
        ("bell \x07", True),
        ("form \x0c", True),
        ("astral 😀", True),
        ("del \x7f", False),
    ],
)
def test_ascii_literal_flags_what_needs_cleaning(text, suspect):
    assert accelerated.compiled is not None
    literal, flagged = accelerated.compiled.ascii_literal_checked(text.encode())
    assert literal == json.dumps(text).encode()
    assert flagged is suspect is needs_cleaning(literal.decode())


def test_jsonb_order_is_the_same_compiled_or_not():
    from iati_refresher.stages import index

    value = {"bb": "1", "a": ["x", {"zz": "", "é": "2", "y": []}], "ccc": {"b": "3", "aa": ["4"]}, "é": "5"}
    ordered = index.jsonb_order(value)
    assert index.jsonb_order is accelerated.compiled.jsonb_order
    assert json.dumps(ordered) == json.dumps(index._python_jsonb_order(value))
    assert list(ordered) == ["a", "bb", "é", "ccc"]


TRICKY_TEXTS = [
    "plain",
    'quote " and \\ backslash',
    "café ü",
    "tab\tnew\nline",
    "bell\x07",
    "\x7f del",
    "\u2028",
    "lone \ud800 surrogate",
    "emoji \U0001f600",
    "",
    "\\b not a control",
    "b\x08f\x0c",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_json_text_is_json_dumps(text):
    value = {text: [text, {"k": text}, []], "plain": text, "": {}}
    written, flagged = accelerated.compiled.json_text(value)
    assert written == json.dumps(value).encode("ascii")
    # the flag is exact: needs_cleaning may also say yes to an escaped backslash before b or f
    assert flagged is any(
        (ord(c) < 0x20 and c not in "\t\n\r") or 0xD800 <= ord(c) <= 0xDFFF or ord(c) > 0xFFFF for c in text
    )
    members, suspect = accelerated.compiled.json_members(value)
    assert b", ".join(members.values()) == json.dumps(value)[1:-1].encode("ascii")
    assert set(suspect) == ({text, "plain"} if flagged else set())


@pytest.mark.parametrize("value", [{"n": 1}, {"b": True}, {"none": None}, {1: "x"}, {"t": ("a",)}, {"f": 1.5}])
def test_json_writers_hand_other_types_to_json(value):
    assert accelerated.compiled.json_text(value) is None
    assert accelerated.compiled.json_members(value) is None


def _index_requests(path: Path) -> list[tuple[str, str, dict]]:
    """(role, id, document as sent) for every document built from ``path``'s activities."""
    from iati_refresher.solr_client import JsonDoc
    from iati_refresher.stages import index

    sent = []
    for occurrence, activity in enumerate(flatten.iter_flat_activities(path)):
        xml = index.LakeLiteral.of(json.dumps(f"<xml {occurrence}/>"), False)
        lake = index.LakeLiteral.of(json.dumps({"n": occurrence}), False)
        built = index.activity_documents(
            activity,
            document_id="d",
            document_hash="h",
            occurrence=occurrence,
            iati_xml=xml,
            iati_json=lake,
            serialised=True,
        )
        for role, doc in built.by_role():
            text = doc.text() if isinstance(doc, JsonDoc) else json.dumps(doc)
            sent.append((role, index.doc_id(doc), json.loads(text)))
    return sent


@pytest.mark.parametrize("path", [p for p in CASES if _parses(p)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_index_documents_are_the_same_compiled_or_not(path, monkeypatch):
    from iati_refresher.stages import index

    compiled_requests = _index_requests(path)
    monkeypatch.setattr(index, "json_members", None)
    monkeypatch.setattr(index, "json_text", None)
    assert compiled_requests == _index_requests(path)
