"""The pipeline decides as the real IATI Validator does (issue cases V1-V8).

Measured against IATI/js-validator-api 2.4.3 on loopback: what it answers for DOCTYPEs,
empty files, bad root attributes, stray content between activities, commented-out
activities and files above its size limit.  Each test is one case, with its own small file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from iati_refresher.settings import Settings
from iati_refresher.stages.clean import CleanSkipped, clean_file
from iati_refresher.stages.validate import validate_document
from iati_refresher.validation.builtin import validate_file
from iati_refresher.validator_client import BuiltinValidatorClient, ValidatorResponse

NOW = datetime(2025, 3, 1, 12, 0, 0)
SETTINGS = Settings(safety_check_period_s=7200)
ROOT = '<iati-activities version="2.03" generated-datetime="2025-01-01T00:00:00Z">'


def activity(identifier: str, valid: bool = True) -> str:
    date = '<activity-date type="1" iso-date="2023-01-01"/>' if valid else '<activity-date iso-date="2023-01-01"/>'
    return (
        f"<iati-activity><iati-identifier>{identifier}</iati-identifier>"
        '<reporting-org ref="XM-EXAMPLE-1" type="10"><narrative>Example</narrative></reporting-org>'
        f"<title><narrative>{identifier}</narrative></title><description><narrative>d</narrative></description>"
        f'<participating-org role="1"/><activity-status code="2"/>{date}</iati-activity>'
    )


def write(tmp_path: Path, text: str | bytes, name: str = "doc.xml") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def doc(**changes: Any) -> dict[str, Any]:
    return {
        "id": "doc-1",
        "hash": "abc",
        "downloaded": NOW - timedelta(hours=3),
        "file_schema_valid": None,
        "black_flag": None,
        "regenerate_validation_report": False,
        **changes,
    }


class NeverAsked:
    """A Validator API client that must not be asked anything."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def schema_validate(self, path: str) -> ValidatorResponse:
        self.calls.append(path)
        return ValidatorResponse(500, {"error": {}, "feedback": "should not have been sent"})

    def validate(self, path: str, meta: bool) -> ValidatorResponse:
        self.calls.append(path)
        return ValidatorResponse(500, {"error": {}, "feedback": "should not have been sent"})


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>\n'
    f"{ROOT}{activity('A-&lol2;')}</iati-activities>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    f"{ROOT}{activity('A-&xxe;')}</iati-activities>"
)
HARMLESS_DOCTYPE = f'<?xml version="1.0"?>\n<!DOCTYPE iati-activities>\n{ROOT}{activity("A-1")}</iati-activities>'
HTML = "<!DOCTYPE html>\n<html><head><title>Not found</title></head><body><p>Sorry</p></body></html>"


# --- V1, V6, V7: DOCTYPEs and entities never reach a Validator, whichever is configured --------


@pytest.mark.parametrize(
    "content",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, HARMLESS_DOCTYPE, HTML],
    ids=["billion-laughs", "external-entity", "harmless-doctype", "html"],
)
@pytest.mark.parametrize("backend", ["api", "builtin"])
def test_a_file_with_a_doctype_is_skipped_once_with_its_reason_and_never_sent(
    tmp_path: Path, content: str, backend: str
) -> None:
    path = write(tmp_path, content)
    validator = NeverAsked() if backend == "api" else BuiltinValidatorClient()

    outcome = validate_document(doc(), path, validator, SETTINGS, now=NOW)

    assert (outcome.status, outcome.code) == ("skipped", "doctype_refused")
    assert "DOCTYPE" in (outcome.message or "")
    assert outcome.data["report"] is None and outcome.data["schema_valid"] is None  # nothing counts toward a flag
    if backend == "api":
        assert validator.calls == []


def test_a_500_keeps_what_the_validator_said(tmp_path: Path) -> None:
    class Failing(NeverAsked):
        def schema_validate(self, path: str) -> ValidatorResponse:
            return ValidatorResponse(
                500, {"feedback": "unhandled server error please contact the iati technical team", "error": {}}
            )

    outcome = validate_document(
        doc(), write(tmp_path, f"{ROOT}{activity('A-1')}</iati-activities>"), Failing(), SETTINGS, now=NOW
    )

    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "http_500", True)
    assert "unhandled server error please contact the iati technical team" in (outcome.message or "")
    assert "{}" not in (outcome.message or "")


# --- V2: an empty file is refused without a report, as the API's 400 "No body" ---------------


def test_an_empty_file_is_rejected_without_a_report_by_the_builtin_validator_too(tmp_path: Path) -> None:
    outcome = validate_document(doc(), write(tmp_path, b""), BuiltinValidatorClient(), SETTINGS, now=NOW)

    assert (outcome.status, outcome.code) == ("skipped", "rejected")
    assert outcome.data["report"] is None
    assert outcome.data["schema_valid"] is None  # not schema-invalid: it does not count toward the flag
    assert outcome.data["api_error"] == 400
    assert "No body" in (outcome.message or "")


# --- V3: each activity is judged wrapped in the root start tag, after what precedes it -------


def meta_validity(path: str) -> list[bool]:
    status, report = validate_file(path, meta=True)
    assert status == 422
    return [entry["valid"] for entry in report["iati-activities"]]


def test_a_bad_root_attribute_makes_every_activity_invalid(tmp_path: Path) -> None:
    root = ROOT.replace("2025-01-01T00:00:00Z", "last tuesday")
    path = write(tmp_path, f"{root}{activity('A-1')}{activity('A-2', valid=False)}{activity('A-3')}</iati-activities>")
    assert meta_validity(path) == [False, False, False]  # the real Validator keeps 0 of 3


@pytest.mark.parametrize(
    "between",
    ["stray text", "<unexpected/>", '<ext:note xmlns:ext="urn:ext">n</ext:note>'],
    ids=["text", "element", "foreign-element"],
)
def test_content_between_activities_makes_the_next_activity_invalid(tmp_path: Path, between: str) -> None:
    body = f"{activity('A-1')}{between}{activity('A-2')}{activity('A-3', valid=False)}"
    path = write(tmp_path, f"{ROOT}{body}</iati-activities>")
    assert meta_validity(path) == [True, False, False]  # the real Validator keeps 1 of 3


def test_comments_and_whitespace_between_activities_invalidate_nothing(tmp_path: Path) -> None:
    body = f"{activity('A-1')}\n  <!-- note -->\n  {activity('A-2')}<?pi x?>{activity('A-3', valid=False)}"
    path = write(tmp_path, f"{ROOT}{body}</iati-activities>")
    assert meta_validity(path) == [True, True, False]


# --- V4: clean matches meta by identifier and position, and keeps nothing on a conflict -----


def invalid_report(meta: list[dict[str, Any]]) -> dict[str, Any]:
    return {"valid": False, "fileType": "iati-activities", "iatiVersion": "2.03", "iati-activities": meta}


def test_a_commented_out_activity_shifting_the_meta_keeps_nothing_instead_of_the_wrong_activities(
    tmp_path: Path,
) -> None:
    body = f"{activity('A-1')}<!-- {activity('OLD-1')} -->{activity('A-2', valid=False)}{activity('A-3')}"
    source = write(tmp_path, f"{ROOT}{body}</iati-activities>")
    # what the real Validator answered for such a file: four entries, the comment's counted
    meta = [
        {"identifier": "A-1", "valid": True, "index": 0},
        {"identifier": "OLD-1", "valid": True, "index": 1},
        {"identifier": "A-2", "valid": False, "index": 2},
        {"identifier": "A-3", "valid": True, "index": 3},
    ]
    out = tmp_path / "clean.xml"

    with pytest.raises(CleanSkipped) as skipped:
        clean_file(source, invalid_report(meta), out)

    assert skipped.value.code == "meta_conflict"
    assert "'OLD-1'" in skipped.value.message and "'A-2'" in skipped.value.message
    assert not out.exists()  # by index alone, A-1 and the invalid A-2 would have been kept


def test_meta_with_an_entry_without_identifier_keeps_nothing(tmp_path: Path) -> None:
    source = write(tmp_path, f"{ROOT}{activity('A-1')}{activity('A-2', valid=False)}</iati-activities>")
    meta = [{"valid": True, "index": 0}, {"identifier": "A-2", "valid": False, "index": 1}]
    with pytest.raises(CleanSkipped) as skipped:
        clean_file(source, invalid_report(meta), tmp_path / "clean.xml")
    assert skipped.value.code == "meta_conflict"


def test_meta_that_matches_by_identifier_and_position_is_followed(tmp_path: Path) -> None:
    body = f"{activity('A-1')}{activity('A-2', valid=False)}{activity('A-1')}{activity('')}"
    source = write(tmp_path, f"{ROOT}{body}</iati-activities>")
    # the Validator's names for a repeated identifier and a missing one
    meta = [
        {"identifier": "A-1", "valid": True, "index": 0},
        {"identifier": " A-2\n", "valid": False, "index": 1},
        {"identifier": "A-1(2)", "valid": True, "index": 2},
        {"identifier": "noIdentifier", "valid": False, "index": 3},
    ]
    out = tmp_path / "clean.xml"
    result = clean_file(source, invalid_report(meta), out)
    assert (result.activities_total, result.activities_kept) == (4, 2)
    assert [a.findtext("iati-identifier") for a in etree.parse(str(out)).getroot()] == ["A-1", "A-1"]


def test_the_builtin_meta_always_agrees_with_clean(tmp_path: Path) -> None:
    body = f"{activity('A-1')}{activity('A-2', valid=False)}{activity('A-1')}{activity('')}"
    source = write(tmp_path, f"{ROOT}{body}</iati-activities>")
    status, report = validate_file(source, meta=True)
    result = clean_file(source, report, tmp_path / "clean.xml")
    assert (status, result.activities_kept) == (422, 3)  # A-2 is the invalid one


# --- V5: one size limit for both paths ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["api", "builtin"])
def test_a_file_above_the_validation_limit_is_skipped_too_large_by_both_paths(tmp_path: Path, backend: str) -> None:
    path = write(tmp_path, f"{ROOT}{activity('A-1')}</iati-activities>" + " " * 4096)
    validator = NeverAsked() if backend == "api" else BuiltinValidatorClient(max_bytes=1024)
    settings = Settings(safety_check_period_s=7200, validator_max_bytes=4096)

    outcome = validate_document(doc(), path, validator, settings, now=NOW)

    assert (outcome.status, outcome.code) == ("skipped", "too_large")
    assert outcome.data["api_error"] == 413 and outcome.data["report"] is None
    assert "REFRESHER_VALIDATOR_MAX_BYTES" in (outcome.message or "")
    if backend == "api":
        assert validator.calls == []


def test_a_file_within_the_limit_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, f"{ROOT}{activity('A-1')}</iati-activities>")
    outcome = validate_document(
        doc(), path, BuiltinValidatorClient(), Settings(validator_max_bytes=len(Path(path).read_bytes())), now=NOW
    )
    assert (outcome.status, outcome.data["report"]["valid"]) == ("ok", True)


# --- V8: a built-in report says it checked the schema only --------------------------------------


def test_a_builtin_report_says_it_is_schema_only(tmp_path: Path) -> None:
    path = write(tmp_path, f"{ROOT}{activity('A-1')}{activity('A-2', valid=False)}</iati-activities>")
    status, report = validate_file(path, meta=False)
    assert (status, report["validationScope"]) == (422, "schema-only")
    file_group = next(g for g in report["errors"] if g["identifier"] == "file")
    notices = [e for c in file_group["errors"] for e in c["errors"] if e["id"] == "schema-only"]
    assert len(notices) == 1 and notices[0]["severity"] == "advisory"
    assert report["summary"]["advisory"] == 1


def test_a_utf16_file_with_entities_is_refused_from_its_byte_order_mark(tmp_path: Path) -> None:
    # the stage reads only the prolog, not the whole file, to decide
    text = f'<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY a "b">]>\n{ROOT}{activity("A-1")}</iati-activities>'
    path = write(tmp_path, text.encode("utf-16"))
    outcome = validate_document(doc(), path, NeverAsked(), SETTINGS, now=NOW)
    assert (outcome.status, outcome.code) == ("skipped", "doctype_refused")
