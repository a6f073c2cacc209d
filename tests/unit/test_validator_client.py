"""The Validator API client: payload, request shape, answers, configuration, secrets."""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path

import httpx
import pytest

from iati_refresher.connections import ConnectionInfo, ConnectionMissing
from iati_refresher.settings import Settings
from iati_refresher.validator_client import (
    BuiltinValidatorClient,
    ValidatorClient,
    ValidatorResponse,
    client_from_connection,
    utf8_payload,
    validator_for,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "validation"
VALID = FIXTURES / "activities-valid-2.03.xml"
MIXED = FIXTURES / "activities-mixed-2.03.xml"
KEY = "s3cret-key-value"


class Recorder:
    """An httpx transport that records what was sent and answers a fixed response."""

    def __init__(self, status: int = 200, body: bytes = b'{"valid": true}'):
        self.status = status
        self.body = body
        self.requests: list[tuple[httpx.Request, bytes]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request, request.read()))
        return httpx.Response(self.status, content=self.body)


def client(recorder: Recorder, **kwargs: object) -> ValidatorClient:
    return ValidatorClient("https://validator.example/", key=KEY, transport=httpx.MockTransport(recorder), **kwargs)


def payload_of(path: Path) -> bytes:
    with utf8_payload(path) as (chunks, length):
        data = b"".join(chunks)
    assert len(data) == length
    return data


# --- payload -------------------------------------------------------------------------------------


def test_utf8_bom_is_stripped_and_the_rest_sent_unchanged(tmp_path: Path) -> None:
    original = VALID.read_bytes()
    path = tmp_path / "bom.xml"
    path.write_bytes(codecs.BOM_UTF8 + original)

    assert payload_of(path) == original


def test_plain_utf8_is_sent_byte_for_byte() -> None:
    assert payload_of(VALID) == VALID.read_bytes()


def test_utf16_file_is_sent_as_utf8_with_a_matching_declaration(tmp_path: Path) -> None:
    text = VALID.read_text(encoding="utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    path = tmp_path / "utf16.xml"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))

    sent = payload_of(path)

    assert sent.decode("utf-8") == text.replace('encoding="UTF-16"', 'encoding="UTF-8"')


def test_latin1_file_is_transcoded(tmp_path: Path) -> None:
    path = tmp_path / "latin1.xml"
    path.write_bytes('<?xml version="1.0" encoding="ISO-8859-1"?>\n<a>Caf\u00e9</a>'.encode("latin-1"))

    assert payload_of(path).decode("utf-8") == '<?xml version="1.0" encoding="UTF-8"?>\n<a>Caf\u00e9</a>'


# --- requests --------------------------------------------------------------------------------------


def test_schema_validate_posts_the_file_with_the_key_header_and_a_length() -> None:
    recorder = Recorder()
    with client(recorder) as c:
        response = c.schema_validate(VALID)

    assert response == ValidatorResponse(200, {"valid": True}, None)
    ((request, body),) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "https://validator.example/api/pvt/schema-validate-file"
    assert request.headers["x-functions-key"] == KEY
    assert request.headers["content-length"] == str(VALID.stat().st_size)
    assert "transfer-encoding" not in request.headers
    assert body == VALID.read_bytes()


@pytest.mark.parametrize(("meta", "query"), [(True, "meta=true"), (False, "")])
def test_validate_asks_for_meta_only_when_told(meta: bool, query: str) -> None:
    recorder = Recorder(body=b'{"valid": false, "summary": {}}')
    with client(recorder) as c:
        response = c.validate(MIXED, meta=meta)

    assert response.status == 200
    assert response.body == {"valid": False, "summary": {}}
    request, _ = recorder.requests[0]
    assert request.url.path == "/api/pub/validate"
    assert request.url.query.decode() == query


def test_paths_and_key_header_are_configurable() -> None:
    recorder = Recorder()
    c = client(recorder, key_name="x-api-key", schema_path="/s", validate_path="/v")
    c.schema_validate(VALID)
    c.validate(VALID, meta=False)
    c.close()

    assert [r.url.path for r, _ in recorder.requests] == ["/s", "/v"]
    assert all(r.headers["x-api-key"] == KEY for r, _ in recorder.requests)


@pytest.mark.parametrize(
    ("status", "body", "expected_body", "error_part"),
    [
        (413, b'{"error": "Max Filesize of 60 MiB exceeded"}', {"error": "Max Filesize of 60 MiB exceeded"}, None),
        (502, b"<html>Bad gateway</html>", None, "not JSON"),
        (200, b"[1, 2]", None, "not an object"),
    ],
)
def test_answers_are_returned_as_status_body_error(
    status: int, body: bytes, expected_body: dict | None, error_part: str | None
) -> None:
    with client(Recorder(status, body)) as c:
        response = c.validate(VALID, meta=False)

    assert response.status == status
    assert response.body == expected_body
    if error_part is None:
        assert response.error is None
    else:
        assert error_part in (response.error or "")


@pytest.mark.parametrize(
    ("exc", "start"),
    [(httpx.ReadTimeout("slow"), "timeout"), (httpx.ConnectError("refused"), "connection error")],
)
def test_transport_failures_have_no_status(exc: Exception, start: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    c = ValidatorClient("https://validator.example", key=KEY, transport=httpx.MockTransport(fail))
    response = c.validate(VALID, meta=True)

    assert response.status is None
    assert response.body is None
    assert (response.error or "").startswith(start)
    assert KEY not in (response.error or "")


def test_the_key_never_shows_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = Recorder()
    with client(recorder) as c:
        c.validate(VALID, meta=False)
        text = repr(c)

    assert "validator.example" in text
    assert KEY not in text
    assert KEY not in caplog.text


# --- configuration ----------------------------------------------------------------------------------


def test_client_from_connection_reads_url_key_and_overrides() -> None:
    conn = ConnectionInfo(
        conn_id="iati_validator",
        conn_type="http",
        host="validator.example",
        port=8443,
        schema="api-root",
        password="from-password",
        extra={"key_name": "x-k", "validate_path": "/v2/validate"},
    )
    c = client_from_connection(conn, Settings(validator_timeout_s=12.5))

    assert c.base_url == "http://validator.example:8443/api-root"
    assert c.key_name == "x-k"
    assert c._client.headers["x-k"] == "from-password"
    assert c.timeout_s == 12.5
    assert (c.schema_path, c.validate_path) == ("/api/pvt/schema-validate-file", "/v2/validate")


def test_extra_key_wins_over_password() -> None:
    conn = ConnectionInfo(conn_id="iati_validator", host="https://v.example", password="p", extra={"key": "k"})
    c = client_from_connection(conn, Settings())
    assert c._client.headers["x-functions-key"] == "k"
    assert c.base_url == "https://v.example"


def test_validator_for_uses_the_builtin_without_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_IATI_VALIDATOR", raising=False)
    monkeypatch.setattr("iati_refresher.validator_client.get_connection", lambda conn_id: None)

    chosen = validator_for(Settings(embedded=True))

    assert isinstance(chosen, BuiltinValidatorClient)
    assert chosen.validate(VALID, meta=True).status == 200
    assert isinstance(validator_for(Settings(validator_backend="builtin")), BuiltinValidatorClient), "on purpose"
    with pytest.raises(ConnectionMissing, match="iati_validator"):
        validator_for(Settings())  # a deployment never falls back silently


def test_validator_for_uses_the_api_when_the_connection_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_IATI_VALIDATOR",
        json.dumps({"conn_type": "http", "host": "validator.example", "port": 7071, "password": KEY}),
    )

    chosen = validator_for(Settings())

    assert isinstance(chosen, ValidatorClient)
    assert chosen.base_url == "http://validator.example:7071"


def test_builtin_client_answers_like_the_api() -> None:
    builtin = BuiltinValidatorClient()
    assert builtin.schema_validate(MIXED) == ValidatorResponse(200, {"valid": False}, None)
    full = builtin.validate(MIXED, meta=True)
    assert full.status == 422
    assert full.body is not None
    # its root attribute is invalid, which fails every activity (as the API wraps each in the root)
    assert [a["valid"] for a in full.body["iati-activities"]] == [False, False, False, False]


def test_builtin_client_refuses_a_file_above_its_limit_like_the_api(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    big.write_bytes(VALID.read_bytes() + b" " * 2048)
    answer = BuiltinValidatorClient(max_bytes=1024).validate(big, meta=False)
    assert (answer.status, "valid" in (answer.body or {})) == (413, False)
    assert "Max Filesize" in answer.body["error"]


def test_airflow_hook_builds_the_client_from_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from iati_refresher.hooks.validator import IatiValidatorHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_IATI_VALIDATOR",
        json.dumps(
            {
                "conn_type": "http",
                "host": "https://validator.example",
                "schema": "validator",
                "extra": {"key": KEY, "key_name": "x-functions-key", "timeout_s": 30},
            }
        ),
    )

    hook = IatiValidatorHook()
    c = hook.get_conn()

    assert IatiValidatorHook.default_conn_name == "iati_validator"
    assert IatiValidatorHook.conn_type == "iati_validator"
    assert "hidden-fields" in _behaviour("iati_validator")
    assert c.base_url == "https://validator.example/validator"
    assert c._client.headers["x-functions-key"] == KEY
    assert c.timeout_s == 30


def _behaviour(connection_type: str) -> dict:
    """The connection form's field behaviour, as the provider registers it."""
    from iati_refresher.provider import get_provider_info

    [entry] = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == connection_type]
    return entry["ui-field-behaviour"]
