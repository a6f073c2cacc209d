"""The Solr client's wire format, paging, error kinds and retries (httpx mock transport)."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import httpx
import pytest

from iati_refresher.connections import ConnectionMissing
from iati_refresher.settings import Settings
from iati_refresher.solr_client import (
    SolrClient,
    SolrError,
    clean_value,
    field_query,
    quote,
    solr_for,
    write_collections,
)

BASE = "http://solr.test:8983/solr"


class Recorder:
    """A fake Solr answering with queued responses and recording every request."""

    def __init__(self, *answers: httpx.Response | Exception):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else httpx.Response(200, json={"responseHeader": {"status": 0}})
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **kwargs) -> SolrClient:
        kwargs.setdefault("collections", write_collections(Settings()))
        kwargs.setdefault("retry_backoff_s", 0)
        return SolrClient(BASE, transport=httpx.MockTransport(self), **kwargs)


def test_add_sends_a_json_array_to_the_write_alias():
    fake = Recorder()
    client = fake.client()
    doc = {"id": "a", "title_narrative": ["x\x00y\x0b", "ok\tkept\n"]}
    sent = client.add("activity", [doc], commit_within_ms=15000)
    assert sent == 1
    (request,) = fake.requests
    assert request.method == "POST"
    assert request.url.path == "/solr/activity_solrize/update"
    assert parse_qs(request.url.query.decode()) == {"commitWithin": ["15000"], "wt": ["json"]}
    assert request.headers["content-type"].startswith("application/json")
    assert json.loads(request.content) == [{"id": "a", "title_narrative": ["xy", "ok\tkept\n"]}]


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("back\x08space form\x0cfeed unit\x1fsep", "backspace formfeed unitsep"),
        ("C:\\bin\\fonts", "C:\\bin\\fonts"),  # backslashes before b and f are text, not controls
        ("tab\tnewline\ncr\r kept", "tab\tnewline\ncr\r kept"),
        ("lone \ud83d surrogate", "lone \ufffd surrogate"),
        ("émoji 😀 ok", "émoji 😀 ok"),
    ],
)
def test_add_cleans_values_like_pysolr(value, sent):
    fake = Recorder()
    fake.client().add("activity", [{"id": "a", "v": [value], "w": value}])
    assert json.loads(fake.requests[0].content) == [{"id": "a", "v": [sent], "w": sent}]


def test_add_of_nothing_sends_nothing():
    fake = Recorder()
    assert fake.client().add("activity", []) == 0
    assert fake.requests == []


def test_unknown_names_are_collections():
    fake = Recorder()
    fake.client().add("activity_2", [{"id": "a"}])
    assert fake.requests[0].url.path == "/solr/activity_2/update"


def test_lone_surrogates_become_replacement_characters():
    assert clean_value({"k": ["a\ud800b"], "n": 1}) == {"k": ["a\ufffdb"], "n": 1}


def test_delete_commands_and_chunking():
    fake = Recorder()
    client = fake.client()
    ids = [f"id-{i}" for i in range(2500)]
    assert client.delete_ids("budget", ids) == 2500
    client.delete_query("budget", field_query("iati_activities_document_id", 'a"b\\c'))
    bodies = [json.loads(r.content) for r in fake.requests]
    assert [len(b["delete"]) for b in bodies[:3]] == [1000, 1000, 500]
    assert [i for b in bodies[:3] for i in b["delete"]] == ids
    assert bodies[3] == {"delete": {"query": 'iati_activities_document_id:"a\\"b\\\\c"'}}
    assert all(r.url.path == "/solr/budget_solrize/update" for r in fake.requests)


def test_delete_of_no_ids_sends_nothing():
    fake = Recorder()
    assert fake.client().delete_ids("activity", []) == 0
    assert fake.requests == []


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('with "quotes"', '"with \\"quotes\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a:b (c) AND -d*", '"a:b (c) AND -d*"'),
    ],
)
def test_quote(value, quoted):
    assert quote(value) == quoted


def _page(ids: list[str], cursor: str) -> httpx.Response:
    return httpx.Response(
        200, json={"response": {"numFound": 5, "docs": [{"id": i} for i in ids]}, "nextCursorMark": cursor}
    )


def test_iter_ids_follows_the_cursor_until_it_stops_moving():
    fake = Recorder(_page(["a", "b"], "c1"), _page(["c", "d"], "c2"), _page(["e"], "c3"), _page([], "c3"))
    ids = list(fake.client().iter_ids("transaction", 'iati_activities_document_id:"d"', page_size=2))
    assert ids == ["a", "b", "c", "d", "e"]
    forms = [parse_qs(r.content.decode()) for r in fake.requests]
    assert [f["cursorMark"][0] for f in forms] == ["*", "c1", "c2", "c3"]
    assert all(f["sort"] == ["id asc"] and f["fl"] == ["id"] and f["rows"] == ["2"] for f in forms)
    assert forms[0]["q"] == ['iati_activities_document_id:"d"']
    assert fake.requests[0].url.path == "/solr/transaction_solrize/select"


def test_count():
    fake = Recorder(httpx.Response(200, json={"response": {"numFound": 42, "docs": []}}))
    assert fake.client().count("activity", "*:*") == 42
    assert parse_qs(fake.requests[0].content.decode())["rows"] == ["0"]


def test_ping():
    fake = Recorder(httpx.Response(200, json={"status": "OK"}), httpx.Response(200, json={"status": "DOWN"}))
    client = fake.client()
    client.ping("activity")
    assert fake.requests[0].url.path == "/solr/activity_solrize/admin/ping"
    with pytest.raises(SolrError) as raised:
        client.ping("activity")
    assert raised.value.kind == "server"


def _solr_error(status: int, msg: str) -> httpx.Response:
    return httpx.Response(status, json={"responseHeader": {"status": status}, "error": {"msg": msg, "code": status}})


@pytest.mark.parametrize(
    ("answer", "kind", "status", "retryable"),
    [
        (_solr_error(400, "ERROR: [doc=x] unknown field 'y'"), "client", 400, False),
        (httpx.Response(404, text="Not Found"), "client", 404, False),
        (_solr_error(500, "Server Error"), "server", 500, True),
        (_solr_error(503, "no servers hosting shard"), "server", 503, True),
        (httpx.ReadTimeout("timed out"), "timeout", None, True),
        (httpx.ConnectError("refused"), "connection", None, True),
        (httpx.RemoteProtocolError("Server disconnected"), "connection", None, True),
    ],
)
def test_error_kinds(answer, kind, status, retryable):
    fake = Recorder(answer)
    with pytest.raises(SolrError) as raised:
        fake.client(max_retries=0).add("activity", [{"id": "a"}])
    assert raised.value.kind == kind
    assert raised.value.status == status
    assert raised.value.retryable is retryable


def test_solr_message_is_kept():
    fake = Recorder(_solr_error(400, "ERROR: [doc=x] multiple values encountered for non multiValued field h"))
    with pytest.raises(SolrError, match="multiple values encountered"):
        fake.client().add("activity", [{"id": "x"}])


def test_server_errors_and_dropped_connections_are_retried():
    fake = Recorder(_solr_error(503, "busy"), httpx.ConnectError("refused"), httpx.Response(200, json={}))
    fake.client(max_retries=2).add("activity", [{"id": "a"}])
    assert len(fake.requests) == 3


def test_retries_give_up():
    fake = Recorder(_solr_error(500, "a"), _solr_error(500, "b"), _solr_error(500, "c"))
    with pytest.raises(SolrError, match="b"):
        fake.client(max_retries=1).add("activity", [{"id": "a"}])
    assert len(fake.requests) == 2


@pytest.mark.parametrize("answer", [_solr_error(400, "bad doc"), httpx.ReadTimeout("slow")])
def test_client_errors_and_timeouts_are_not_retried(answer):
    fake = Recorder(answer, httpx.Response(200, json={}))
    with pytest.raises(SolrError):
        fake.client(max_retries=3).add("activity", [{"id": "a"}])
    assert len(fake.requests) == 1


def test_credentials_in_the_url_become_basic_auth_and_never_show():
    fake = Recorder(httpx.ConnectError("refused"))
    client = SolrClient(
        "http://admin:s3cr%40t@solr.test:8983/solr/", transport=httpx.MockTransport(fake), max_retries=0
    )
    assert client.base_url == "http://solr.test:8983/solr"
    with pytest.raises(SolrError) as raised:
        client.count("activity")
    expected = "Basic " + base64.b64encode(b"admin:s3cr@t").decode()
    assert fake.requests[0].headers["authorization"] == expected
    assert "s3cr" not in str(raised.value) + repr(client)
    assert fake.requests[0].url.path == "/solr/activity/select"


def test_write_collections_follow_the_settings():
    settings = Settings(solr_activity_collection="act", solr_alias_suffix="_w")
    assert write_collections(settings) == {"activity": "act_w", "transaction": "transaction_w", "budget": "budget_w"}


def test_solr_for_reads_the_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SOLR", raising=False)
    assert solr_for(Settings(embedded=True), use_airflow=False) is None, "an embedded run skips indexing"
    with pytest.raises(ConnectionMissing, match="'solr'"):
        solr_for(Settings(), use_airflow=False)  # a deployment never skips it silently
    monkeypatch.setenv("AIRFLOW_CONN_SOLR", "http://reader:pw%21@solr.internal:8983/solr")
    client = solr_for(Settings(solr_timeout_s=12.0), use_airflow=False)
    assert client is not None
    assert client.base_url == "http://solr.internal:8983/solr"
    assert client.collections["budget"] == "budget_solrize"
    assert client._http.timeout.read == 12.0
    assert isinstance(client._http.auth, httpx.BasicAuth)


def test_solr_for_accepts_a_host_with_scheme_and_path(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SOLR", json.dumps({"conn_type": "http", "host": "https://search.example.org/solr"})
    )
    client = solr_for(Settings(), use_airflow=False)
    assert client is not None
    assert client.base_url == "https://search.example.org/solr"
    assert client._http.auth is None


def test_hook_builds_the_client_from_the_airflow_connection(monkeypatch):
    from iati_refresher.hooks.solr import SolrHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_SOLR_TEST",
        json.dumps(
            {
                "conn_type": "http",
                "host": "solr",
                "port": 8983,
                "schema": "solr",
                "login": "indexer",
                "password": "not-logged",
            }
        ),
    )
    hook = SolrHook("solr_test", settings=Settings(solr_alias_suffix=""))
    client = hook.get_conn()
    assert client.base_url == "http://solr:8983/solr"
    assert client.collections == {"activity": "activity", "transaction": "transaction", "budget": "budget"}
    assert isinstance(client._http.auth, httpx.BasicAuth)
    assert SolrHook.default_conn_name == "solr"
    assert SolrHook.conn_type == "iati_solr"
    assert "host" in _behaviour("iati_solr")["relabeling"]


def _behaviour(connection_type: str) -> dict:
    """The connection form's field behaviour, as the provider registers it."""
    from iati_refresher.provider import get_provider_info

    [entry] = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == connection_type]
    return entry["ui-field-behaviour"]
