"""The Solr configsets and the Solr stand-in that enforces them.

The stand-in is only useful if it rejects what Solr would reject with the project's schema,
so these tests pin both: the generated schema (field types, multiplicity, required fields,
handlers) and the stand-in's behaviour (schema checks, queries, paging, faults).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from lxml import etree

from iati_refresher.settings import Settings
from iati_refresher.solr_client import SolrClient, SolrError, field_query, write_collections
from tests.standins.solr_server import CONFIGSETS, Schema, SolrRequestError, SolrStandin, parse_query

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "index"
REQUIRED = {"id": "a-1", "iati_activities_document_id": "doc", "iati_activities_document_hash": "h"}


def _generator():
    """solr/generate_configsets.py (a script, not part of the package)."""
    name = "generate_configsets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROJECT / "solr" / "generate_configsets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def _schema_fields(collection: str) -> dict[str, etree._Element]:
    root = etree.parse(str(CONFIGSETS / collection / "conf" / "managed-schema.xml")).getroot()
    return {f.get("name"): f for f in root.iter("field")}


@pytest.fixture
def solr():
    with SolrStandin() as standin:
        yield standin


@pytest.fixture
def client(solr):
    with SolrClient(solr.base_url, collections=write_collections(Settings()), max_retries=0) as c:
        yield c


# ---------------------------------------------------------------------------------------
# the generator's rules, on a tiny schema written for this test
# ---------------------------------------------------------------------------------------


def test_generator_rules_on_a_small_schema():
    gen = _generator()
    specs = gen.activity_fields(FIXTURES / "mini-xsd")
    table = {name: (gen.solr_type(spec), spec.occurs > 1) for name, spec in specs.items()}
    assert table == {
        # activity attributes: no prefix; xml:lang → xml_lang
        "xml_lang": ("text_gen_sort", False),
        "hierarchy": ("pint", False),
        "humanitarian": ("boolean", False),
        "last_updated_datetime": ("pdate", False),
        "iati_identifier": ("text_gen_sort", False),
        # narratives repeat; their xml:lang follows the path
        "title_narrative": ("text_general", True),
        "title_narrative_xml_lang": ("text_gen_sort", True),
        # everything under a repeatable element is multi-valued
        "budget_type": ("text_gen_sort", True),
        "budget_period_start_iso_date": ("pdate", True),
        "budget_value": ("pdouble", True),
        "budget_value_currency": ("text_gen_sort", True),  # global attribute by ref
        "budget_value_value_date": ("pdate", True),
        # inline simple type restricting decimal; a date the flattener does not normalise stays text
        "crs_add_loan_rate": ("pdouble", False),
        "crs_add_loan_signed": ("text_gen_sort", False),
        # complexContent extension: base content plus the extension's own
        "doc_link_url": ("text_general", False),  # xsd:anyURI: words, as production has URIs
        "doc_link_title_narrative": ("text_general", True),
        "doc_link_title_narrative_xml_lang": ("text_gen_sort", True),
        "doc_link_rank": ("pint", False),
        # a-b/@c and a/@b-c both flatten to a_b_c: two paths, so multi-valued
        "a_b_c": ("text_gen_sort", True),
        "dataset_version": ("text_gen_sort", False),
        "dataset_generated_datetime": ("pdate", False),
        "dataset_linked_data_default": ("text_general", False),  # production's type
    }


def test_generator_writes_three_configsets(tmp_path):
    gen = _generator()
    written = {p.relative_to(tmp_path).as_posix() for p in gen.write_configsets(FIXTURES / "mini-xsd", tmp_path)}
    assert "activity/conf/xslt/iati_xml.xsl" in written
    for collection in ("activity", "transaction", "budget"):
        for name in ("managed-schema.xml", "solrconfig.xml", "stopwords.txt", "synonyms.txt"):
            assert f"{collection}/conf/{name}" in written
        schema = Schema(tmp_path / collection / "conf" / "managed-schema.xml")
        assert schema.fields["budget_value"].multi
        assert ("iati_xml" in schema.fields) is (collection == "activity")


# ---------------------------------------------------------------------------------------
# the committed configsets
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("collection", ["activity", "transaction", "budget"])
def test_configset_files_are_well_formed(collection):
    conf = CONFIGSETS / collection / "conf"
    schema = etree.parse(str(conf / "managed-schema.xml")).getroot()
    types = {t.get("name") for t in schema.iter("fieldType")}
    for node in [*schema.iter("field"), *schema.iter("dynamicField")]:
        assert node.get("type") in types, node.get("name")
    assert schema.findtext("uniqueKey") == "id"
    config = etree.parse(str(conf / "solrconfig.xml")).getroot()
    assert config.findtext("luceneMatchVersion") == "9.3"
    auto = config.find("updateHandler/autoCommit")
    assert auto.findtext("maxTime").endswith(":15000}")
    assert auto.findtext("openSearcher") == "true"
    assert config.find("updateHandler/autoSoftCommit").findtext("maxTime").endswith(":-1}")
    handlers = {h.get("name") for h in config.iter("requestHandler")}
    assert {"/select", "/search", "/query"} <= handlers
    assert ({"/iati", "/iati_json"} <= handlers) is (collection == "activity")
    search = next(h for h in config.iter("requestHandler") if h.get("name") == "/search")
    assert search.find("lst/str[@name='defType']").text == "edismax"
    assert search.find("lst/str[@name='df']").text == "iati_text"
    for words in ("stopwords.txt", "synonyms.txt"):
        assert (conf / words).is_file()


def test_schema_facts():
    fields = _schema_fields("activity")

    def kind(name):
        node = fields[name]
        return node.get("type"), node.get("multiValued") == "true"

    for name in ("id", "iati_activities_document_id", "iati_activities_document_hash"):
        assert fields[name].get("required") == "true"
        assert kind(name) == ("string", False)
    assert kind("iati_xml") == ("string_large", False)
    assert fields["iati_xml"].get("indexed") == "false"
    assert kind("location_point_latlon") == ("location_point", True)
    assert fields["indexed_datetime"].get("default") == "NOW"
    expectations = {
        "iati_identifier": ("text_gen_sort", False),
        "dataset_version": ("text_gen_sort", False),
        "xml_lang": ("text_gen_sort", False),
        "default_currency": ("text_gen_sort", False),
        "activity_status_code": ("text_gen_sort", False),
        "hierarchy": ("pint", False),
        "humanitarian": ("boolean", False),
        "result_indicator_baseline_year": ("pint", True),
        "transaction_humanitarian": ("boolean", True),
        "reporting_org_secondary_reporter": ("boolean", False),
        "result_indicator_ascending": ("boolean", True),
        "crs_add_other_flags_significance": ("boolean", True),
        "fss_priority": ("boolean", False),
        "last_updated_datetime": ("pdate", False),
        "dataset_generated_datetime": ("pdate", False),
        "fss_extraction_date": ("pdate", False),
        "transaction_transaction_date_iso_date": ("pdate", True),
        "budget_value_value_date": ("pdate", True),
        "transaction_value": ("pdouble", True),
        "budget_value": ("pdouble", True),
        "sector_percentage": ("pdouble", True),
        "capital_spend_percentage": ("pdouble", False),
        "fss_phaseout_year": ("pdouble", False),
        "fss_forecast_year": ("pdouble", True),
        "crs_add_loan_terms_rate_1": ("pdouble", False),
        "title_narrative": ("text_general", True),
        "participating_org_ref": ("text_gen_sort", True),
    }
    assert {name: kind(name) for name in expectations} == expectations
    root = etree.parse(str(CONFIGSETS / "activity" / "conf" / "managed-schema.xml")).getroot()
    copies = {(c.get("source"), c.get("dest")) for c in root.iter("copyField")}
    assert copies == {("*_narrative", "iati_text"), ("iati_identifier", "iati_identifier_exact")}
    (catch_all,) = root.iter("dynamicField")
    assert (
        catch_all.get("name"),
        catch_all.get("type"),
        catch_all.get("indexed"),
        catch_all.get("stored"),
        catch_all.get("multiValued"),
    ) == ("*", "text_general", "false", "true", "true")


def test_transaction_and_budget_share_the_activity_fields_without_the_lake():
    activity = set(_schema_fields("activity"))
    assert set(_schema_fields("transaction")) == activity - {"iati_xml", "iati_json"}
    assert set(_schema_fields("budget")) == activity - {"iati_xml", "iati_json"}


@pytest.mark.parametrize("collection", ["activity", "transaction", "budget"])
def test_every_field_of_a_full_flattened_activity_is_explicit_and_valid(collection):
    flat = json.loads((FIXTURES / "full-activity.json").read_text())
    schema = Schema(CONFIGSETS / collection / "conf" / "managed-schema.xml")
    assert [name for name in flat if name not in schema.fields] == []
    stored = schema.check({**flat, **REQUIRED})
    assert stored["hierarchy"] == 2
    assert stored["transaction_value"] == [-25.5]


def test_iati_xml_stylesheet_wraps_the_stored_activities():
    xslt = etree.XSLT(etree.parse(str(CONFIGSETS / "activity" / "conf" / "xslt" / "iati_xml.xsl")))
    answer = etree.fromstring(
        b'<response><result numFound="2" start="0">'
        b'<doc><str name="iati_xml">&lt;iati-activity xmlns:x="http://x"&gt;&lt;iati-identifier&gt;A&amp;amp;B'
        b'&lt;/iati-identifier&gt;&lt;/iati-activity&gt;\n</str><date name="datetime">2024-01-02T03:04:05Z</date></doc>'
        b'<doc><str name="iati_xml">&lt;iati-activity&gt;&lt;iati-identifier&gt;C&lt;/iati-identifier&gt;'
        b'&lt;/iati-activity&gt;</str><date name="datetime">2024-01-02T03:04:05Z</date></doc>'
        b"</result></response>"
    )
    out = etree.fromstring(str(xslt(answer)).encode())
    assert out.tag == "iati-activities"
    assert out.get("version") == "2.03"
    assert out.get("generated-datetime") == "2024-01-02T03:04:05Z"
    assert [a.findtext("iati-identifier") for a in out] == ["A&B", "C"]


# ---------------------------------------------------------------------------------------
# the stand-in rejects what Solr would reject
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"hierarchy": "one"}, "Error adding field 'hierarchy'"),
        ({"hierarchy": "1.5"}, "Error adding field 'hierarchy'"),
        ({"hierarchy": "99999999999"}, "Error adding field 'hierarchy'"),
        ({"transaction_value": ["10", "ten"]}, "Error adding field 'transaction_value'"),
        ({"last_updated_datetime": "2024-01-01"}, "Invalid Date String"),
        ({"last_updated_datetime": "2024-02-30T00:00:00Z"}, "Invalid Date String"),
        ({"humanitarian": "yes"}, "Invalid boolean"),
        ({"hierarchy": ["1", "2"]}, "multiple values encountered for non multiValued field hierarchy"),
        ({"iati_identifier": ["A", "B"]}, "multiple values encountered for non multiValued field iati_identifier"),
        ({"location_point_latlon": ["91.0,1.0"]}, "Invalid latitude/longitude"),
        ({"location_point_latlon": "1 2"}, "Point must be in 'lat, lon' format"),
        ({"capital_spend_percentage": ""}, "Error adding field 'capital_spend_percentage'"),
        ({"title_narrative": {"set": "x"}}, "nested values"),
    ],
)
def test_rejects_values_the_schema_does_not_accept(client, extra, message):
    with pytest.raises(SolrError) as raised:
        client.add("activity", [{**REQUIRED, **extra}])
    assert raised.value.kind == "client"
    assert raised.value.status == 400
    assert message in raised.value.message


@pytest.mark.parametrize("missing", ["iati_activities_document_id", "iati_activities_document_hash"])
def test_rejects_missing_required_fields(client, missing):
    doc = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(SolrError, match=f"missing required field: {missing}"):
        client.add("transaction", [doc])


def test_rejects_a_document_without_id(client):
    with pytest.raises(SolrError, match="missing mandatory uniqueKey field: id"):
        client.add("budget", [{"iati_activities_document_id": "d", "iati_activities_document_hash": "h"}])


def test_lake_fields_exist_only_for_activities(client, solr):
    client.add("activity", [{**REQUIRED, "iati_xml": "<iati-activity/>"}])
    # transaction has no explicit iati_xml: the catch-all takes it (stored, multi-valued text)
    client.add("transaction", [{**REQUIRED, "iati_xml": "<iati-activity/>"}])
    assert solr.docs("activity")[0]["iati_xml"] == "<iati-activity/>"
    assert solr.docs("transaction")[0]["iati_xml"] == ["<iati-activity/>"]


def test_accepts_valid_values_and_unknown_fields(client, solr):
    client.add(
        "activity",
        [
            {
                **REQUIRED,
                "hierarchy": "+2",
                "humanitarian": "TRUE",
                "transaction_value": ["1e3", "-2.5", ".5"],
                "last_updated_datetime": "2024-02-29T23:59:59.123Z",
                "location_point_latlon": ["-90,180"],
                "iati_identifier": ["only-one"],
                "dstore_extension_attribute": "kept",
                "title_narrative": [],
            }
        ],
    )
    (doc,) = solr.docs("activity")
    assert doc["hierarchy"] == 2
    assert doc["humanitarian"] is True
    assert doc["transaction_value"] == [1000.0, -2.5, 0.5]
    assert doc["iati_identifier"] == "only-one"
    assert doc["dstore_extension_attribute"] == ["kept"]
    assert "title_narrative" not in doc
    assert doc["indexed_datetime"].endswith("Z")  # default NOW


def test_a_rejected_document_ends_the_request_but_earlier_ones_stay(client, solr):
    batch = [{**REQUIRED, "id": "a"}, {**REQUIRED, "id": "b", "hierarchy": "x"}, {**REQUIRED, "id": "c"}]
    with pytest.raises(SolrError):
        client.add("activity", batch)
    assert solr.ids("activity") == {"a"}


def test_strict_schema_rejects_unknown_fields_and_applies_defaults():
    with SolrStandin({"things": "strict"}, configsets=FIXTURES / "configsets") as standin:
        c = SolrClient(standin.base_url, max_retries=0)
        with pytest.raises(SolrError, match="unknown field 'colour'"):
            c.add("things", [{"id": "1", "owner": "o", "colour": "red"}])
        c.add("things", [{"id": "1", "owner": "o", "size_l": "12", "x_any": ["a", "b"], "note": "hidden"}])
        with pytest.raises(SolrError, match="size_l"):
            c.add("things", [{"id": "2", "owner": "o", "size_l": "big"}])
        (doc,) = standin.docs("things")
        assert doc["created"] == "unknown"
        assert doc["size_l"] == 12
        answer = c.select("things", "*:*")
        assert "note" not in answer["response"]["docs"][0]  # stored="false"
        c.close()


# ---------------------------------------------------------------------------------------
# queries, paging and update commands
# ---------------------------------------------------------------------------------------


DOCS = [
    {"id": "1", "owner": "ann", "tags": ["red", "blue"]},
    {"id": "2", "owner": "bob", "tags": ["red"]},
    {"id": "3", "owner": 'o"q', "tags": ["green"]},
    {"id": "4", "owner": "ann"},
]


@pytest.mark.parametrize(
    ("q", "ids"),
    [
        ("*:*", {"1", "2", "3", "4"}),
        ('owner:"ann"', {"1", "4"}),
        ("owner:ann", {"1", "4"}),
        ('owner:"o\\"q"', {"3"}),
        ('tags:"red" AND owner:"bob"', {"2"}),
        ('tags:"red" OR tags:"green"', {"1", "2", "3"}),
        ("tags:red tags:green", {"1", "2", "3"}),
        ('owner:"ann" AND NOT tags:"red"', {"4"}),
        ('owner:"ann" AND -tags:"red"', {"4"}),
        ('-owner:"ann"', {"2", "3"}),
        ('(owner:"ann" OR owner:"bob") AND tags:"red"', {"1", "2"}),
        ('owner:("bob" OR ann) && !id:"1"', {"2", "4"}),
        ("tags:*", {"1", "2", "3"}),
        ('+owner:"bob"', {"2"}),
    ],
)
def test_query_subset(q, ids):
    matcher = parse_query(q)
    assert {d["id"] for d in DOCS if matcher(d)} == ids


@pytest.mark.parametrize("q", ['owner:"ann', "owner:(ann", "AND", "owner:"])
def test_query_syntax_errors(q):
    with pytest.raises(SolrRequestError):
        parse_query(q)


def test_select_paging_and_fields(client, solr):
    client.add("activity", [{**REQUIRED, "id": f"id-{i:04d}", "iati_identifier": f"X-{i}"} for i in range(2345)])
    assert client.count("activity") == 2345
    ids = list(client.iter_ids("activity", field_query("iati_activities_document_id", "doc"), page_size=500))
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids)) == 2345
    page = client.select("activity", "*:*", fl="id,iati_identifier", rows=3, start=10)
    assert [d["id"] for d in page["response"]["docs"]] == ["id-0010", "id-0011", "id-0012"]
    assert set(page["response"]["docs"][0]) == {"id", "iati_identifier"}
    filtered = client.select("activity", "*:*", fq='iati_identifier:"X-7"', rows=10)
    assert filtered["response"]["numFound"] == 1
    with pytest.raises(SolrError, match="sort"):
        client.select("activity", "*:*", sort="iati_identifier asc")


def test_update_commands(solr):
    client = httpx.Client()
    url = f"{solr.base_url}/budget_solrize/update?commitWithin=1000"
    docs = [{**REQUIRED, "id": str(i)} for i in range(6)]
    assert client.post(url, json=docs).status_code == 200
    body = (
        '{"delete": "0", "delete": ["1", "2"], "delete": {"id": "3"}, "delete": {"query": "id:\\"4\\""}, "commit": {}}'
    )
    response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert solr.ids("budget") == {"5"}
    add = client.post(url, json={"add": {"doc": {**REQUIRED, "id": "9"}}})
    assert add.status_code == 200
    assert solr.ids("budget") == {"5", "9"}
    assert client.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    client.close()


def test_aliases_and_unknown_collections(client, solr):
    client.add("activity", [REQUIRED])  # through the activity_solrize alias
    assert solr.ids("activity") == {"a-1"}
    assert client.count("activity_solrize") == 1
    with pytest.raises(SolrError) as raised:
        client.count("nope")
    assert raised.value.status == 404
    client.ping("activity")


def test_basic_auth_is_enforced():
    with SolrStandin(auth=("indexer", "secret")) as standin:
        anonymous = SolrClient(standin.base_url, max_retries=0)
        with pytest.raises(SolrError) as raised:
            anonymous.ping("activity")
        assert raised.value.status == 401
        SolrClient(standin.base_url, auth=("indexer", "secret")).ping("activity")
        anonymous.close()


# ---------------------------------------------------------------------------------------
# fault injection
# ---------------------------------------------------------------------------------------


def test_fail_next_answers_errors_without_changing_anything(client, solr):
    solr.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(SolrError) as raised:
            client.add("activity", [REQUIRED])
        assert (raised.value.kind, raised.value.status) == ("server", 503)
    client.add("activity", [REQUIRED])
    assert solr.ids("activity") == {"a-1"}


def test_fail_next_for_updates_lets_queries_through(client, solr):
    solr.fail_next(1, updates_only=True)
    assert client.count("activity") == 0
    with pytest.raises(SolrError):
        client.delete_query("activity", "*:*")


def test_retries_ride_over_a_short_outage(solr):
    solr.fail_next(2, status=502)
    with SolrClient(solr.base_url, max_retries=2, retry_backoff_s=0) as c:
        c.add("activity_solrize", [REQUIRED])
    assert solr.ids("activity") == {"a-1"}


def test_delay_makes_the_client_time_out(solr):
    solr.delay_next(1, seconds=1.0)
    with SolrClient(solr.base_url, timeout_s=0.2, max_retries=3) as c:
        with pytest.raises(SolrError) as raised:
            c.add("activity", [REQUIRED])
        assert raised.value.kind == "timeout"
        assert raised.value.retryable
    assert solr.ids("activity") == set()


def test_fail_mid_batch_applies_the_first_documents(client, solr):
    solr.fail_mid_batch(after_docs=2)
    with pytest.raises(SolrError) as raised:
        client.add("activity", [{**REQUIRED, "id": str(i)} for i in range(5)])
    assert raised.value.kind == "server"
    assert solr.ids("activity") == {"0", "1"}
    client.add("activity", [{**REQUIRED, "id": "later"}])  # one-shot
    assert "later" in solr.ids("activity")


def test_down_refuses_connections_and_up_keeps_the_data(client, solr):
    client.add("activity", [REQUIRED])
    port = solr.port
    solr.down()
    with pytest.raises(SolrError) as raised:
        client.count("activity")
    assert raised.value.kind == "connection"
    solr.up()
    assert solr.port == port
    assert client.count("activity") == 1


def test_on_update_sees_the_state_between_requests(client, solr):
    seen = []
    probe = SolrClient(solr.base_url, collections=write_collections(Settings()), max_retries=0)

    def hook(event):
        seen.append(
            (
                event.collection,
                event.added,
                event.deleted_ids,
                probe.count("activity"),
                threading.current_thread() is not threading.main_thread(),
            )
        )

    solr.on_update = hook
    client.add("activity", [{**REQUIRED, "id": "x"}, {**REQUIRED, "id": "y"}])
    client.delete_ids("activity", ["x"])
    client.delete_query("activity", 'id:"y"')
    assert seen == [("activity", 2, 0, 2, True), ("activity", 0, 1, 1, True), ("activity", 0, 0, 0, True)]
    probe.close()


# ---------------------------------------------------------------------------------------
# solr/create-collections.sh against the stand-in's Collections/Configsets API
# ---------------------------------------------------------------------------------------


def _create_collections(solr: SolrStandin, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # no `solr` command: the API upload is used
        "SOLR_URL": solr.base_url,
        "SOLR_AUTH": "admin:pa55word",
        "SOLR_WAIT_S": "10",
        **env,
    }
    return subprocess.run(
        ["bash", str(PROJECT / "solr" / "create-collections.sh")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_create_collections_script_is_idempotent():
    with SolrStandin(collections={}, aliases={}, auth=("admin", "pa55word")) as solr:
        first = _create_collections(solr)
        assert first.returncode == 0, first.stderr
        assert "pa55word" not in first.stdout + first.stderr
        assert sorted(solr.cores) == ["activity_1", "budget_1", "transaction_1"]
        assert sorted(solr.configsets) == ["activity_configset_1", "budget_configset_1", "transaction_configset_1"]
        assert solr.aliases == {
            "activity_solrize": "activity_1",
            "activity": "activity_1",
            "transaction_solrize": "transaction_1",
            "transaction": "transaction_1",
            "budget_solrize": "budget_1",
            "budget": "budget_1",
        }
        changes = list(solr.admin_log)

        second = _create_collections(solr)
        assert second.returncode == 0, second.stderr
        assert solr.admin_log == changes  # nothing created twice

        # The uploaded schemas are enforced through the refresher's write aliases.
        with SolrClient(
            solr.base_url, auth=("admin", "pa55word"), collections=write_collections(Settings()), max_retries=0
        ) as client:
            client.add("activity", [{**REQUIRED, "iati_xml": "<iati-activity/>"}])
            with pytest.raises(SolrError, match="hierarchy"):
                client.add("transaction", [{**REQUIRED, "hierarchy": "top"}])
        assert solr.ids("activity") == {"a-1"}

        # A new version: the write alias moves, readers stay on version 1 until told.
        third = _create_collections(solr, SOLR_COLLECTION_VERSION="2", REPOINT_WRITE_ALIAS="1")
        assert third.returncode == 0, third.stderr
        assert solr.aliases["activity_solrize"] == "activity_2"
        assert solr.aliases["activity"] == "activity_1"
        assert "activity_2" in solr.cores


def test_create_collections_script_fails_when_solr_is_away():
    with SolrStandin(collections={}, aliases={}) as solr:
        solr.down()
        result = _create_collections(solr, SOLR_WAIT_S="1")
    assert result.returncode != 0
    assert "did not answer" in result.stderr
