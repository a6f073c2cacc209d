"""The real ``iati_refresh`` DAG, end to end through ``dag.test()``.

Real PostgreSQL and Azurite; loopback stand-ins for the Bulk Data Service / publisher
servers and the IATI Validator API.  No code path of ours is mocked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.world import World
from tests.standins.registry_server import HTML_ERROR_PAGE, RegistryStandIn, bds_dataset, bds_org
from tests.standins.validator_server import ValidatorStandin

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"
ORG_A, ORG_B = "aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b"


def big_activity_file(copies: int) -> bytes:
    """A valid activity file made big by repeating the sample's activities under new identifiers."""
    text = (SAMPLE / "meadowlark-activities.xml").read_text(encoding="utf-8")
    head, rest = text.split("<iati-activity ", 1)
    body, tail = rest.rsplit("</iati-activities>", 1)
    activities = "<iati-activity " + body
    repeated = "".join(
        re.sub(
            r"<iati-identifier>([^<]+)</iati-identifier>", rf"<iati-identifier>\1-copy{n}</iati-identifier>", activities
        )
        for n in range(copies)
    )
    return (head + repeated + "</iati-activities>" + tail).encode("utf-8")


@pytest.fixture
def world(refresher_env, azurite, pg_dbname, monkeypatch):
    with RegistryStandIn() as registry, ValidatorStandin(max_bytes=40_000) as validator:
        monkeypatch.setenv("AIRFLOW_CONN_IATI_REGISTRY", registry.url)
        monkeypatch.setenv(
            "AIRFLOW_CONN_IATI_VALIDATOR",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": validator.url,
                    "extra": {"key_name": validator.key_name, "key": validator.key},
                }
            ),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_REFRESHER_BLOB",
            json.dumps(
                {
                    "conn_type": "wasb",
                    "extra": {"connection_string": azurite.connection_string},
                }
            ),
        )
        monkeypatch.setenv("REFRESHER_SAFETY_CHECK_PERIOD_S", "0")
        for c in ("source", "clean", "lake", "flat"):
            monkeypatch.setenv(f"REFRESHER_{c.upper()}_CONTAINER", f"{c}-{pg_dbname[-8:]}")
        yield World(pg_dbname[-8:], pg_dbname, registry, validator, None, None, azurite)


def container(world: World, name: str) -> str:
    import os

    return os.environ[f"REFRESHER_{name.upper()}_CONTAINER"]


def test_first_load_then_changes_then_a_broken_index(world: World, run_dag) -> None:
    valid_url, valid_hash = world.publish_file("valid.xml", (SAMPLE / "meadowlark-activities.xml").read_bytes())
    mixed_url, mixed_hash = world.publish_file("mixed.xml", (SAMPLE / "meadowlark-mixed.xml").read_bytes())
    html_url, html_hash = world.publish_file("html.xml", HTML_ERROR_PAGE)
    big_url, big_hash = world.publish_file("big.xml", big_activity_file(12))
    cp1252_url, cp1252_hash = world.publish_file(
        "cp1252.xml", (SAMPLE / "riverbend-sanitation-cp1252.xml").read_bytes()
    )
    publishers = [bds_org(ORG_A, "org-a"), bds_org(ORG_B, "org-b")]
    datasets = [
        bds_dataset("d-valid", "org-a-valid", ORG_A, cached_url=valid_url, hash_=valid_hash),
        bds_dataset("d-mixed", "org-a-mixed", ORG_A, cached_url=mixed_url, hash_=mixed_hash),
        bds_dataset("d-html", "org-b-html", ORG_B, cached_url=html_url, hash_=html_hash),
        bds_dataset("d-big", "org-b-big", ORG_B, cached_url=big_url, hash_=big_hash),
        bds_dataset("d-cp1252", "org-b-cp1252", ORG_B, cached_url=cp1252_url, hash_=cp1252_hash),
        bds_dataset("d-404", "org-b-gone", ORG_B, cached_url=world.registry.url + "/status/404", hash_="4" * 40),
        bds_dataset("d-nocopy", "org-b-nocopy", ORG_B, cached_url=None, hash_=None),
    ]
    world.registry.set_bds(publishers, datasets)

    dag_run, states = run_dag("iati_refresh")
    assert str(dag_run.state).endswith("success"), states

    # --- download: the reference's error codes; files stored byte for byte --------------------
    assert world.doc("d-404")["download_error"] == 404 and world.doc("d-404")["downloaded"] is None
    assert world.doc("d-nocopy")["download_error"] == 4
    assert (
        world.blobs.get_bytes(container(world, "source"), f"{valid_hash}.xml")
        == (SAMPLE / "meadowlark-activities.xml").read_bytes()
    )

    # --- validation: a valid, a partly invalid, a non-IATI and an oversize file -------------
    valid = world.doc("d-valid")
    report = world.rows("SELECT * FROM validation WHERE id = %s", valid["validation"])[0]
    assert report["valid"] and valid["file_schema_valid"] is True
    assert (report["document_hash"], report["publisher"], report["publisher_name"]) == (valid_hash, ORG_A, "org-a")

    mixed = world.doc("d-mixed")
    mixed_report = world.rows("SELECT * FROM validation WHERE id = %s", mixed["validation"])[0]
    assert mixed["file_schema_valid"] is False and not mixed_report["valid"]
    meta = mixed_report["report"]["iati-activities"]
    assert [m["valid"] for m in meta] == [True, False, True]

    # an HTML error page (<!DOCTYPE html>) is never sent to the Validator: a reason, no report
    html = world.doc("d-html")
    assert html["validation"] is None and html["file_schema_valid"] is None
    assert world.stage("d-html", "validate")["code"] == "doctype_refused"
    assert "DOCTYPE" in world.stage("d-html", "validate")["message"]

    big = world.doc("d-big")
    assert big["validation"] is None and big["validation_api_error"] == 413
    assert world.stage("d-big", "validate")["outcome"] == "skipped"
    posts = [r for r in world.validator.requests if r.path.endswith("/validate")]
    assert sum(1 for r in posts if r.size > 40_000) == 1, "an oversize file is posted once, never again"

    # --- clean / flatten / lakify -------------------------------------------------------------
    assert world.doc("d-valid")["clean_end"] is not None
    kept = world.blobs.get_bytes(container(world, "clean"), f"{mixed_hash}.xml")
    assert kept.count(b"<iati-activity ") == 2, "only the activities the report marks valid"
    for doc_id in ("d-valid", "d-mixed", "d-cp1252"):
        row = world.doc(doc_id)
        assert row["flatten_end"] and row["lakify_end"], doc_id
        assert row["flattened_activities"]["activities"] == row["activity_count"] > 0
    lake = sorted(world.blobs.list(container(world, "lake"), "d-valid/"))
    assert len(lake) == 2 * world.doc("d-valid")["activity_count"]
    flat = world.blobs.get_bytes(container(world, "flat"), f"d-cp1252/{cp1252_hash}.jsonl").decode("utf-8")
    assert "\u00e9" in flat or "\u00f1" in flat or "\u2013" in flat, "Windows-1252 text decoded, not mojibake"
    assert "Ã" not in flat

    # --- telemetry and change log ---------------------------------------------------------------
    telemetry = world.rows(
        "SELECT stage, sum(documents_in) AS n FROM run_stage_telemetry WHERE run_id = %s GROUP BY stage", dag_run.run_id
    )
    assert {r["stage"]: r["n"] for r in telemetry}["download"] == 7
    added = world.rows("SELECT document_id FROM registry_change WHERE run_id = %s AND change = 'added'", dag_run.run_id)
    assert len(added) == 7

    # --- second run: one dataset changed, one removed, a publisher renamed ---------------------
    new_url, new_hash = world.publish_file(
        "valid-v2.xml",
        (SAMPLE / "meadowlark-activities.xml")
        .read_bytes()
        .replace(b"</iati-activities>", b"<!-- v2 --></iati-activities>"),
    )
    publishers[1] = bds_org(ORG_B, "org-b-renamed")
    datasets[0] = bds_dataset("d-valid", "org-a-valid", ORG_A, cached_url=new_url, hash_=new_hash)
    del datasets[2]  # d-html leaves the registry
    world.registry.set_bds(publishers, datasets, index_created=1_800_000_000)

    dag_run2, states2 = run_dag("iati_refresh")
    assert str(dag_run2.state).endswith("success"), states2
    changes = {
        (r["document_id"], r["change"])
        for r in world.rows("SELECT document_id, change FROM registry_change WHERE run_id = %s", dag_run2.run_id)
    }
    assert changes == {("d-valid", "updated"), ("d-html", "removed")}
    v2 = world.doc("d-valid")
    assert v2["hash"] == new_hash and v2["downloaded"] is not None and v2["lakify_end"] is not None
    assert not world.blobs.exists(container(world, "source"), f"{valid_hash}.xml"), "old version removed"
    assert world.rows("SELECT id FROM document WHERE id = 'd-html'") == []
    assert not world.blobs.exists(container(world, "source"), f"{html_hash}.xml")
    assert world.doc("d-big")["publisher"] == ORG_B, "a renamed publisher keeps its documents"
    assert world.rows("SELECT name FROM publisher WHERE org_id = %s", ORG_B)[0]["name"] == "org-b-renamed"
    assert sum(1 for r in world.validator.requests if r.path.endswith("/validate") and r.size > 40_000) == 1

    # --- third run: the index lost two thirds of its datasets -> refused, nothing deleted ------
    world.registry.set_bds(publishers, datasets[:2], index_created=1_900_000_000)
    dag_run3, states3 = run_dag("iati_refresh")
    assert str(dag_run3.state).endswith("failed"), "a refused sync must be visible"
    assert states3["summary"].endswith("failed") and states3["sync_registry"].endswith("success")
    assert len(world.rows("SELECT id FROM document")) == 6
