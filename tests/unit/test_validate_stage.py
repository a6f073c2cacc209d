"""The validate stage's flow and how it judges each kind of Validator answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.settings import Settings
from iati_refresher.stages.validate import validate_document
from iati_refresher.validator_client import BuiltinValidatorClient, ValidatorResponse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "validation"
MIXED = FIXTURES / "activities-mixed-2.03.xml"
VALID = FIXTURES / "activities-valid-2.03.xml"
SRC = str(VALID)  # a real file: the stage looks at its size and prolog before asking
NOW = datetime(2025, 3, 1, 12, 0, 0)
SETTINGS = Settings(safety_check_period_s=7200)
REPORT = {"valid": True, "fileType": "iati-activities", "summary": {"critical": 0, "error": 1, "warning": 2}}
INVALID_REPORT = {
    "valid": False,
    "fileType": "iati-activities",
    "summary": {"critical": 3},
    "iati-activities": [{"identifier": "A", "valid": False, "index": 0}],
}


class ScriptedValidator:
    """Answers from a script and remembers what the stage asked."""

    def __init__(self, schema: ValidatorResponse | None = None, full: ValidatorResponse | None = None):
        self.schema_answer = schema
        self.full_answer = full
        self.calls: list[tuple[str, str, bool | None]] = []

    def schema_validate(self, path: str) -> ValidatorResponse:
        self.calls.append(("schema", path, None))
        assert self.schema_answer is not None, "schema check was not expected"
        return self.schema_answer

    def validate(self, path: str, meta: bool) -> ValidatorResponse:
        self.calls.append(("full", path, meta))
        assert self.full_answer is not None, "full validation was not expected"
        return self.full_answer


def doc(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "doc-1",
        "hash": "abc",
        "downloaded": NOW - timedelta(hours=3),
        "file_schema_valid": None,
        "black_flag": None,
        "regenerate_validation_report": False,
    }
    return {**base, **changes}


def test_schema_valid_file_is_fully_validated_without_meta() -> None:
    validator = ScriptedValidator(ValidatorResponse(200, {"valid": True}), ValidatorResponse(200, REPORT))

    outcome = validate_document(doc(), SRC, validator, SETTINGS, now=NOW)

    assert validator.calls == [("schema", SRC, None), ("full", SRC, False)]
    assert outcome.status == "ok"
    assert outcome.code is None
    assert outcome.data["schema_valid"] is True
    assert outcome.data["report"] == REPORT
    assert outcome.data["api_error"] is None
    assert outcome.data["phase"] == "full"
    assert "1 error" in (outcome.message or "")


def test_fresh_schema_invalid_file_waits_for_the_safety_period() -> None:
    downloaded = NOW - timedelta(minutes=30)
    validator = ScriptedValidator(ValidatorResponse(200, {"valid": False}))

    outcome = validate_document(doc(downloaded=downloaded), SRC, validator, SETTINGS, now=NOW)

    assert [c[0] for c in validator.calls] == ["schema"]
    assert (outcome.status, outcome.code) == ("ok", "waiting_safety_period")
    assert outcome.data["schema_valid"] is False  # the new result is recorded
    assert outcome.data["report"] is None
    assert outcome.data["deferred_until"] == (downloaded + timedelta(seconds=7200)).isoformat()


def test_known_invalid_file_past_the_period_is_validated_with_meta() -> None:
    validator = ScriptedValidator(full=ValidatorResponse(422, INVALID_REPORT))

    outcome = validate_document(doc(file_schema_valid=False), SRC, validator, SETTINGS, now=NOW)

    assert validator.calls == [("full", SRC, True)]
    assert outcome.status == "ok"
    assert outcome.data["report"] == INVALID_REPORT
    assert outcome.data["api_error"] == 422
    assert outcome.data["schema_valid"] is None  # nothing new learnt about the schema


def test_flagged_publisher_blocks_full_validation_of_invalid_files() -> None:
    validator = ScriptedValidator()
    flagged = doc(file_schema_valid=False, black_flag=NOW - timedelta(days=3), downloaded=NOW - timedelta(days=5))

    outcome = validate_document(flagged, SRC, validator, SETTINGS, now=NOW)

    assert validator.calls == []
    assert (outcome.status, outcome.code) == ("ok", "publisher_flagged")
    assert outcome.data["deferred"] == "publisher_flagged"


def test_flagged_publisher_does_not_block_schema_valid_files() -> None:
    validator = ScriptedValidator(full=ValidatorResponse(200, REPORT))
    outcome = validate_document(
        doc(file_schema_valid=True, black_flag=NOW, regenerate_validation_report=True),
        SRC,
        validator,
        SETTINGS,
        now=NOW,
    )
    assert validator.calls == [("full", SRC, False)]
    assert outcome.data["report"] == REPORT


def test_aware_datetimes_are_compared_in_utc() -> None:
    validator = ScriptedValidator(full=ValidatorResponse(200, REPORT))
    aware_now = datetime(2025, 3, 1, 13, 0, tzinfo=UTC)

    waiting = validate_document(
        doc(file_schema_valid=False, downloaded=datetime(2025, 3, 1, 12, 0)),
        SRC,
        validator,
        SETTINGS,
        now=aware_now,
    )
    assert waiting.code == "waiting_safety_period"
    done = validate_document(
        doc(file_schema_valid=False, downloaded=datetime(2025, 3, 1, 10, 59)),
        SRC,
        validator,
        SETTINGS,
        now=aware_now,
    )
    assert done.data["report"] == REPORT


@pytest.mark.parametrize(
    ("answer", "status", "code", "retryable", "api_error"),
    [
        (ValidatorResponse(413, {"error": "Max Filesize of 60 MiB exceeded"}), "skipped", "too_large", False, 413),
        (ValidatorResponse(400, {"error": "No body"}), "skipped", "rejected", False, 400),
        (ValidatorResponse(422, {"error": "odd"}), "skipped", "rejected", False, 422),
        (ValidatorResponse(401, None, "HTTP 401, not JSON: ''"), "failed", "http_401", False, 401),
        (ValidatorResponse(404, {"error": "not found"}), "failed", "http_404", False, 404),
        (ValidatorResponse(500, {"feedback": "x", "error": "boom"}), "failed", "http_500", True, 500),
        (ValidatorResponse(503, None, "HTTP 503, not JSON"), "failed", "http_503", True, 503),
        (
            ValidatorResponse(None, None, "timeout: no answer within 3600 s"),
            "failed",
            "validator_unavailable",
            True,
            None,
        ),
        (
            ValidatorResponse(None, None, "connection error: ConnectError"),
            "failed",
            "validator_unavailable",
            True,
            None,
        ),
        (ValidatorResponse(200, {"unexpected": 1}), "failed", "unexpected_answer", True, 200),
    ],
)
def test_full_validation_answers_are_judged(
    answer: ValidatorResponse, status: str, code: str, retryable: bool, api_error: int | None
) -> None:
    validator = ScriptedValidator(full=answer)

    outcome = validate_document(doc(file_schema_valid=True), SRC, validator, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code, outcome.retryable) == (status, code, retryable)
    assert outcome.data["report"] is None
    assert outcome.data["api_error"] == api_error
    assert outcome.data["phase"] == "full"
    assert outcome.message


def test_400_with_a_report_keeps_the_report() -> None:
    report = {"valid": False, "fileType": "", "summary": {"critical": 1}, "errors": []}
    validator = ScriptedValidator(full=ValidatorResponse(400, report))

    outcome = validate_document(doc(file_schema_valid=True), SRC, validator, SETTINGS, now=NOW)

    assert outcome.status == "ok"
    assert (outcome.data["report"], outcome.data["api_error"]) == (report, 400)


@pytest.mark.parametrize(
    ("answer", "status", "code", "retryable"),
    [
        (ValidatorResponse(500, {"error": "boom"}), "failed", "http_500", True),
        (ValidatorResponse(None, None, "timeout"), "failed", "validator_unavailable", True),
        (ValidatorResponse(200, {"error": "?"}), "failed", "unexpected_answer", True),
        (ValidatorResponse(400, {"error": "No body"}), "skipped", "rejected", False),
        (ValidatorResponse(403, None, "forbidden"), "failed", "http_403", False),
    ],
)
def test_schema_check_failures_stop_before_full_validation(
    answer: ValidatorResponse, status: str, code: str, retryable: bool
) -> None:
    validator = ScriptedValidator(schema=answer)

    outcome = validate_document(doc(), SRC, validator, SETTINGS, now=NOW)

    assert [c[0] for c in validator.calls] == ["schema"]
    assert (outcome.status, outcome.code, outcome.retryable) == (status, code, retryable)
    assert outcome.data["phase"] == "schema"
    assert outcome.data["schema_valid"] is None


def test_full_failure_after_a_new_schema_result_still_reports_it() -> None:
    validator = ScriptedValidator(ValidatorResponse(200, {"valid": True}), ValidatorResponse(502, None, "bad gw"))

    outcome = validate_document(doc(), SRC, validator, SETTINGS, now=NOW)

    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.data["schema_valid"] is True


def test_with_the_builtin_validator_an_invalid_file_gets_meta_for_clean(tmp_path: Path) -> None:
    # (with its root attributes valid: a bad one would make every activity invalid)
    path = tmp_path / "mixed.xml"
    path.write_text(MIXED.read_text().replace('generated-datetime="yesterday"', ""))
    outcome = validate_document(doc(), str(path), BuiltinValidatorClient(), SETTINGS, now=NOW)

    assert outcome.status == "ok"
    assert outcome.data["schema_valid"] is False
    assert outcome.data["api_error"] == 422
    report = outcome.data["report"]
    assert [a["index"] for a in report["iati-activities"] if a["valid"]] == [0, 2]


def test_with_the_builtin_validator_a_valid_file_has_no_meta() -> None:
    outcome = validate_document(doc(), str(VALID), BuiltinValidatorClient(), SETTINGS, now=NOW)

    assert outcome.status == "ok"
    assert outcome.data["schema_valid"] is True
    assert outcome.data["report"]["valid"] is True
    assert "iati-activities" not in outcome.data["report"]
