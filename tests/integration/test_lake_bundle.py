"""The lake bundle: lakify writes every lake entry of a version into one blob, and indexing
reads it instead of parsing the clean file again — with the same Solr documents either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.settings import Settings
from iati_refresher.solr_client import ROLES, SolrClient, field_query, needs_cleaning, write_collections
from iati_refresher.stages.flatten import flatten_document
from iati_refresher.stages.index import index_document
from iati_refresher.stages.lakify import iter_lake_entries, lake_bundle_name, lakify_document
from iati_refresher.storage import LocalBlobStore
from tests.standins.solr_server import SolrStandin

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"
SOURCE = SAMPLE / "meadowlark-activities.xml"
DOC, HASH = "bundle-doc", "b" * 40
SETTINGS = Settings(solr_batch_size=3)


def prepared(tmp_path: Path, source: bytes) -> tuple[LocalBlobStore, dict[str, Any]]:
    """A store holding what clean, flatten and lakify wrote for one version."""
    blobs = LocalBlobStore(str(tmp_path / "blobs"))
    blobs.put_bytes(SETTINGS.clean_container, f"{HASH}.xml", source)
    doc: dict[str, Any] = {"id": DOC, "hash": HASH}
    flat = flatten_document(doc, blobs, SETTINGS)
    assert flat.status == "ok", flat
    doc["flattened_activities"] = flat.data["manifest"]
    lake = lakify_document(doc, blobs, SETTINGS)
    assert lake.status == "ok", lake
    return blobs, doc


def indexed(blobs: LocalBlobStore, doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """role → id → document, as a fresh Solr stores them after indexing ``doc``."""
    with (
        SolrStandin() as standin,
        SolrClient(standin.base_url, collections=write_collections(SETTINGS), max_retries=0) as solr,
    ):
        outcome = index_document(doc, blobs, solr, SETTINGS)
        assert outcome.status == "ok", outcome
        q = field_query("iati_activities_document_id", DOC)
        return {
            role: {d["id"]: {k: v for k, v in d.items() if k != "indexed_datetime"} for d in standin.docs(role, q)}
            for role in ROLES
        }


@pytest.fixture(params=["sample", "non-ascii and duplicates"])
def source(request) -> bytes:
    data = SOURCE.read_bytes()
    if request.param == "sample":
        return data
    # a title with non-ASCII text and an attribute with it, and every activity twice
    head, _, rest = data.partition(b"<iati-activity ")
    body, _, tail = rest.rpartition(b"</iati-activities>")
    body = body.replace(b"<narrative>", "<narrative>\u00c1gua \u2013 \u201cok\u201d ".encode(), 1)
    return head + b"<iati-activity " + body + b"<iati-activity " + body + b"</iati-activities>" + tail


def test_lakify_writes_one_bundle_line_per_lake_entry(tmp_path, source):
    blobs, _ = prepared(tmp_path, source)
    lines = blobs.get_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH)).decode("ascii").splitlines()
    entries = list(iter_lake_entries(str(tmp_path / "blobs" / SETTINGS.clean_container / f"{HASH}.xml")))
    assert len(lines) == len(entries) > 0
    for line, entry in zip(lines, entries, strict=True):
        identifier, occurrence, xml, lake_json, suspect = line.split("\t")
        assert (json.loads(identifier), int(occurrence)) == (entry.identifier, entry.occurrence)
        assert json.loads(xml).encode("utf-8") == entry.xml and json.loads(lake_json) == entry.json
        # the cleaning flag says what the index stage's own check would say of the two literals
        assert suspect == ("1" if needs_cleaning(xml) or needs_cleaning(lake_json) else "0")


def test_a_bundle_without_the_cleaning_flag_still_indexes_the_same_documents(tmp_path, source):
    blobs, doc = prepared(tmp_path, source)
    current = indexed(blobs, doc)
    bundle = blobs.get_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH)).decode("ascii")
    # a bundle written before the flag existed: four fields a line
    older = "".join(line.rsplit("\t", 1)[0] + "\n" for line in bundle.splitlines())
    assert older != bundle and all(line.count("\t") == 3 for line in older.splitlines())
    blobs.put_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH), older.encode("ascii"))
    # so that nothing but the bundle can give the lake texts
    blobs.delete(SETTINGS.clean_container, [f"{HASH}.xml"])
    blobs.delete(SETTINGS.lake_container, list(blobs.list(SETTINGS.lake_container, f"{DOC}/")))
    assert indexed(blobs, doc) == current


def test_indexing_from_the_bundle_gives_the_same_documents_without_reading_the_clean_file(tmp_path, source):
    blobs, doc = prepared(tmp_path, source)
    # without the bundle: rebuilt from the clean file (the path of versions lakified before bundles)
    bundle = blobs.get_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH))
    blobs.delete(SETTINGS.flat_container, [lake_bundle_name(DOC, HASH)])
    rebuilt = indexed(blobs, doc)
    # with the bundle and neither the clean file nor the lake blobs: everything comes from the bundle
    lake_blobs = {
        name: blobs.get_bytes(SETTINGS.lake_container, name) for name in blobs.list(SETTINGS.lake_container, f"{DOC}/")
    }
    blobs.put_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH), bundle)
    blobs.delete(SETTINGS.clean_container, [f"{HASH}.xml"])
    blobs.delete(SETTINGS.lake_container, list(lake_blobs))
    from_bundle_only = indexed(blobs, doc)
    assert from_bundle_only == rebuilt
    assert all(len(rebuilt[role]) > 0 for role in ROLES)


def test_a_bundle_that_disagrees_with_the_activities_is_left_for_the_lake_blobs(tmp_path):
    blobs, doc = prepared(tmp_path, SOURCE.read_bytes())
    expected = indexed(blobs, doc)
    lines = blobs.get_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH)).decode("ascii").splitlines()
    wrong = [json.dumps("not-this-activity") + line[line.index("\t") :] for line in lines[1:2]] + lines[2:]
    blobs.put_bytes(SETTINGS.flat_container, lake_bundle_name(DOC, HASH), ("\n".join(lines[:1] + wrong)).encode())
    blobs.delete(SETTINGS.clean_container, [f"{HASH}.xml"])
    assert indexed(blobs, doc) == expected


def test_a_new_version_replaces_the_old_bundle(tmp_path):
    blobs, _doc = prepared(tmp_path, SOURCE.read_bytes())
    new_hash = "c" * 40
    blobs.put_bytes(SETTINGS.clean_container, f"{new_hash}.xml", SOURCE.read_bytes())
    assert lakify_document({"id": DOC, "hash": new_hash}, blobs, SETTINGS).status == "ok"
    bundles = [n for n in blobs.list(SETTINGS.flat_container, f"{DOC}/") if n.endswith(".lake.tsv")]
    assert bundles == [lake_bundle_name(DOC, new_hash)]
