"""Every Validator status path, through the real HTTP client, against the stand-in server."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from iati_refresher.settings import Settings
from iati_refresher.stages.validate import validate_document
from iati_refresher.validator_client import ValidatorClient
from tests.standins.validator_server import Scripted, ValidatorStandin

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "validation"
VALID = FIXTURES / "activities-valid-2.03.xml"
MIXED = FIXTURES / "activities-mixed-2.03.xml"
NOW = datetime(2025, 3, 1, 12, 0)
SETTINGS = Settings()


@pytest.fixture
def standin() -> Iterator[ValidatorStandin]:
    with ValidatorStandin(max_bytes=64 * 1024) as server:
        yield server


@pytest.fixture
def client(standin: ValidatorStandin) -> Iterator[ValidatorClient]:
    with ValidatorClient(standin.url, key=standin.key, timeout_s=10) as c:
        yield c


def doc(**changes: object) -> dict:
    return {
        "id": "doc-1",
        "hash": "h",
        "downloaded": NOW - timedelta(hours=3),
        "file_schema_valid": None,
        "black_flag": None,
        "regenerate_validation_report": False,
        **changes,
    }


# --- the contract ---------------------------------------------------------------------------------


def test_schema_endpoint_answers_valid_flag(client: ValidatorClient, standin: ValidatorStandin) -> None:
    assert client.schema_validate(VALID).body == {"valid": True}
    assert client.schema_validate(MIXED).body == {"valid": False}
    assert [(r.path, r.size, r.key_ok) for r in standin.requests] == [
        ("/api/pvt/schema-validate-file", VALID.stat().st_size, True),
        ("/api/pvt/schema-validate-file", MIXED.stat().st_size, True),
    ]


def test_full_validation_statuses(client: ValidatorClient, tmp_path: Path) -> None:
    not_iati = tmp_path / "rss.xml"
    not_iati.write_text("<rss/>")
    broken = tmp_path / "broken.xml"
    broken.write_text("<iati-activities version='2.03'><iati-activity>")
    old = tmp_path / "old.xml"
    old.write_text(VALID.read_text().replace('version="2.03"', 'version="1.05"'))

    assert client.validate(VALID, meta=False).status == 200
    mixed = client.validate(MIXED, meta=True)
    assert mixed.status == 422
    # its root attribute is invalid: every activity is, as with the real Validator
    assert [a["valid"] for a in mixed.body["iati-activities"]] == [False, False, False, False]
    assert client.validate(not_iati, meta=False).status == 422
    assert client.validate(old, meta=False).status == 422
    parse = client.validate(broken, meta=False)
    assert parse.status == 400
    assert parse.body["errors"][0]["errors"][0]["errors"][0]["id"] == "0.1.1"


def test_meta_query_is_sent_only_when_asked(client: ValidatorClient, standin: ValidatorStandin) -> None:
    client.validate(MIXED, meta=True)
    client.validate(MIXED, meta=False)
    assert [r.query for r in standin.requests] == [{"meta": "true"}, {}]


def test_wrong_or_missing_key_is_401(standin: ValidatorStandin) -> None:
    with ValidatorClient(standin.url, key="wrong") as wrong, ValidatorClient(standin.url) as missing:
        assert wrong.validate(VALID, meta=False).status == 401
        assert missing.schema_validate(VALID).status == 401
    assert [r.key_ok for r in standin.requests] == [False, False]


def test_empty_body_is_400_no_body(client: ValidatorClient, tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    answer = client.validate(empty, meta=False)
    assert (answer.status, answer.body) == (400, {"error": "No body"})


def test_bom_is_not_posted(client: ValidatorClient, standin: ValidatorStandin, tmp_path: Path) -> None:
    bom = tmp_path / "bom.xml"
    bom.write_bytes(codecs.BOM_UTF8 + VALID.read_bytes())

    assert client.validate(bom, meta=False).status == 200
    (request,) = standin.requests
    assert request.size == VALID.stat().st_size
    assert request.body_head.startswith(b"<?xml")
    assert request.content_type == "application/xml"


def test_connections_are_reused(client: ValidatorClient, standin: ValidatorStandin) -> None:
    client.schema_validate(VALID)
    client.validate(VALID, meta=False)
    client.validate(MIXED, meta=True)
    assert len({r.client_port for r in standin.requests}) == 1


# --- the stage through the client, one status path each -------------------------------------------


def test_stage_keeps_report_for_valid_file(client: ValidatorClient, standin: ValidatorStandin) -> None:
    outcome = validate_document(doc(), str(VALID), client, SETTINGS, now=NOW)

    assert outcome.status == "ok"
    assert (outcome.data["schema_valid"], outcome.data["api_error"]) == (True, None)
    assert outcome.data["report"]["valid"] is True
    assert [(r.path, r.query) for r in standin.requests] == [
        ("/api/pvt/schema-validate-file", {}),
        ("/api/pub/validate", {}),
    ]


def test_stage_keeps_422_report_with_meta_for_invalid_file(client: ValidatorClient, standin: ValidatorStandin) -> None:
    outcome = validate_document(doc(), str(MIXED), client, SETTINGS, now=NOW)

    assert outcome.status == "ok"
    assert (outcome.data["schema_valid"], outcome.data["api_error"]) == (False, 422)
    assert "iati-activities" in outcome.data["report"]
    assert standin.requests[-1].query == {"meta": "true"}


def test_stage_waits_without_full_validation_inside_the_safety_period(
    client: ValidatorClient, standin: ValidatorStandin
) -> None:
    outcome = validate_document(doc(downloaded=NOW - timedelta(minutes=5)), str(MIXED), client, SETTINGS, now=NOW)

    assert outcome.code == "waiting_safety_period"
    assert [r.path for r in standin.requests] == ["/api/pvt/schema-validate-file"]


def test_stage_skips_a_file_over_the_size_limit_once(
    client: ValidatorClient, standin: ValidatorStandin, tmp_path: Path
) -> None:
    big = tmp_path / "big.xml"
    activity = VALID.read_text().split("<iati-activity", 2)[2].rsplit("</iati-activities>", 1)[0]
    big.write_text(
        VALID.read_text().replace("</iati-activities>", ("<iati-activity" + activity) * 200 + "</iati-activities>")
    )
    assert big.stat().st_size > standin.max_bytes

    outcome = validate_document(doc(file_schema_valid=True), str(big), client, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code, outcome.data["api_error"]) == ("skipped", "too_large", 413)
    assert "Max Filesize" in (outcome.message or "")


def test_stage_records_rejected_empty_file(client: ValidatorClient, tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    outcome = validate_document(doc(file_schema_valid=True), str(empty), client, SETTINGS, now=NOW)
    assert (outcome.status, outcome.code, outcome.data["api_error"]) == ("skipped", "rejected", 400)


def test_stage_keeps_400_report_for_unparseable_file(client: ValidatorClient, tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<iati-activities version='2.03'><iati-activity>")
    outcome = validate_document(doc(file_schema_valid=False), str(broken), client, SETTINGS, now=NOW)
    assert (outcome.status, outcome.data["api_error"]) == ("ok", 400)
    assert outcome.data["report"]["valid"] is False


def test_stage_gives_up_on_auth_failure(standin: ValidatorStandin) -> None:
    with ValidatorClient(standin.url, key="wrong") as wrong:
        outcome = validate_document(doc(), str(VALID), wrong, SETTINGS, now=NOW)
    assert (outcome.status, outcome.code, outcome.retryable, outcome.data["phase"]) == (
        "failed",
        "http_401",
        False,
        "schema",
    )


@pytest.mark.parametrize("status", [500, 503])
def test_stage_retries_server_errors(client: ValidatorClient, standin: ValidatorStandin, status: int) -> None:
    standin.script(Scripted(status=200, body={"valid": True}), Scripted(status=status, body={"error": "busy"}))

    outcome = validate_document(doc(), str(VALID), client, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", f"http_{status}", True)
    assert (outcome.data["schema_valid"], outcome.data["api_error"]) == (True, status)
    # The next attempt succeeds once the Validator is back.
    again = validate_document(doc(file_schema_valid=True), str(VALID), client, SETTINGS, now=NOW)
    assert again.status == "ok"


def test_stage_retries_after_a_dropped_connection(client: ValidatorClient, standin: ValidatorStandin) -> None:
    standin.drop_next()

    outcome = validate_document(doc(), str(VALID), client, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "validator_unavailable", True)
    assert outcome.data["api_error"] is None
    assert "connection error" in (outcome.message or "")


def test_stage_retries_after_a_timeout(standin: ValidatorStandin) -> None:
    standin.delay_next(5)
    with ValidatorClient(standin.url, key=standin.key, timeout_s=0.3) as impatient:
        outcome = validate_document(doc(file_schema_valid=True), str(VALID), impatient, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "validator_unavailable", True)
    assert "timeout" in (outcome.message or "")


def test_unreachable_validator_is_retryable() -> None:
    with ValidatorStandin() as gone:
        url = gone.url  # nothing listens there once the server has stopped
    with ValidatorClient(url, key="k", timeout_s=2) as c:
        outcome = validate_document(doc(), str(VALID), c, SETTINGS, now=NOW)
    assert (outcome.code, outcome.retryable) == ("validator_unavailable", True)
