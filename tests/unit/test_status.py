"""Per-dataset status on a real database: one document in every state, and why.

Documents are put in their states with the repository's own statements (as the stages
would), with a few direct updates to move timestamps into the past.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from iati_refresher import status
from iati_refresher.db import repository as repo
from iati_refresher.settings import Settings

SETTINGS = Settings(max_attempts=5, retry_base_delay_s=600, safety_check_period_s=7200, safety_check_threshold=100)
SEEN = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture(autouse=True)
def _solr_as_the_environment_says(monkeypatch):
    """Whether indexing is configured comes from this test's environment (no Solr connection),
    not from a cached answer or a connection another in-process test preloaded."""
    from iati_refresher import connections

    monkeypatch.setattr(connections, "_PRELOADED", {})
    monkeypatch.setattr(status, "_INDEX_CONFIGURED", {})


def _hash(n: int) -> str:
    return f"{n:040x}"


def _report(
    *,
    valid: bool,
    file_type: str = "iati-activities",
    version: str = "2.03",
    critical: int = 0,
    meta: list[bool] | None = None,
) -> dict:
    report = {
        "valid": valid,
        "fileType": file_type,
        "iatiVersion": version,
        "summary": {"critical": critical, "error": 1, "warning": 2, "advisory": 0},
        "errors": [],
    }
    if meta is not None:
        report[file_type] = [{"identifier": f"XM-1-{i}", "valid": ok, "index": i} for i, ok in enumerate(meta)]
    return report


class Docs:
    """Builds documents through the pipeline's own repository statements."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.n = 0
        repo.upsert_publisher(conn, {"org_id": "XM-DAC-1", "name": "meadowlark", "title": "Meadowlark Trust"}, SEEN)
        repo.upsert_publisher(conn, {"org_id": "XM-DAC-2", "name": "riverbend", "title": "Riverbend Water"}, SEEN)

    def add(self, name: str, publisher: str = "XM-DAC-1") -> dict:
        self.n += 1
        doc = {
            "id": f"00000000-0000-0000-0000-{self.n:012d}",
            "hash": _hash(self.n),
            "name": name,
            "url": f"https://user:secret@example.org/{name}.xml",
            "publisher": publisher,
            "cached_dataset_url": f"https://bds.example.org/{name}.xml",
        }
        repo.upsert_document(self.conn, doc, SEEN)
        return doc

    def outcome(
        self,
        doc: dict,
        stage: str,
        status_: str,
        code: str | None = None,
        message: str | None = None,
        *,
        retryable: bool = False,
        times: int = 1,
    ) -> None:
        for _ in range(times):
            repo.record_outcomes(
                self.conn,
                stage,
                [
                    {
                        "document_id": doc["id"],
                        "hash": doc["hash"],
                        "status": status_,
                        "code": code,
                        "message": message,
                        "retryable": retryable,
                    }
                ],
                run_id="manual__1",
                max_attempts=SETTINGS.max_attempts,
                base_delay_s=600,
                max_delay_s=86400,
            )

    def downloaded(self, doc: dict, *, hours_ago: float = 5) -> None:
        repo.finish_download(self.conn, [{"id": doc["id"], "hash": doc["hash"], "ok": True, "bytes": 100}])
        self.conn.execute(
            "UPDATE document SET downloaded = downloaded - make_interval(secs => %s) WHERE id = %s",
            (hours_ago * 3600, doc["id"]),
        )
        self.outcome(doc, "download", "ok")

    def download_failed(
        self, doc: dict, error: int, code: str, message: str, *, retryable: bool, times: int = 1
    ) -> None:
        repo.finish_download(self.conn, [{"id": doc["id"], "hash": doc["hash"], "ok": False, "download_error": error}])
        self.outcome(doc, "download", "failed", code, message, retryable=retryable, times=times)

    def validated(self, doc: dict, report: dict, *, schema_valid: bool | None = None) -> None:
        repo.save_validation(
            self.conn,
            doc,
            report,
            api_error=None,
            schema_valid=report["valid"] if schema_valid is None else schema_valid,
        )
        self.outcome(doc, "validate", "ok")

    def through(self, doc: dict, last: str, *, activities: int = 3) -> None:
        """Mark the stages after validation done, up to and including ``last``."""
        order = ["clean", "flatten", "lakify", "index"]
        for stage in order[: order.index(last) + 1]:
            if stage == "clean":
                repo.finish_clean(self.conn, doc, ok=True, error=None)
            elif stage == "flatten":
                repo.finish_flatten(self.conn, doc, ok=True, manifest=[], activities=activities)
            elif stage == "lakify":
                repo.finish_lakify(self.conn, doc, ok=True, error=None)
            else:
                repo.finish_index(self.conn, doc, ok=True, error=None, activities=activities)
            self.outcome(doc, stage, "ok")


@pytest.fixture
def docs(db):
    return Docs(db)


def one(db, key: str) -> dict:
    rows = status.dataset_status(db, key, settings=SETTINGS)
    assert len(rows) == 1, rows
    return rows[0]


def test_unknown_dataset_has_no_status(db, docs):
    docs.add("something")
    assert status.dataset_status(db, "no-such-dataset", settings=SETTINGS) == []


def test_new_dataset_waits_for_download(db, docs):
    doc = docs.add("fresh")
    row = one(db, "fresh")
    assert row["id"] == doc["id"]
    assert (row["state"], row["availability"], row["reasons"]) == ("pending_download", "Pending", [])
    assert row["timestamps"]["first_seen"] == SEEN
    assert row["publisher_name"] == "meadowlark"
    assert row["last_error"] is None


def test_stage_rows_in_pipeline_order(db, docs):
    doc = docs.add("ordered")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "index")
    assert [s["stage"] for s in one(db, "ordered")["stages"]] == list(repo.STAGES)


def test_lookup_by_id_and_by_name_agree(db, docs):
    doc = docs.add("by-key")
    assert one(db, doc["id"]) == one(db, "by-key")


def test_connection_error_is_retried_with_backoff(db, docs):
    doc = docs.add("flaky")
    docs.download_failed(doc, 0, "connection_error", "connection refused", retryable=True, times=2)
    row = one(db, "flaky")
    assert row["state"] == "pending_download"
    assert row["availability"] == "Pending"
    assert row["retrying"] is True
    assert row["errors"] == {"download_error": 0}
    assert row["reasons"][0].startswith("The file could not be downloaded: the server could not be reached")
    assert "attempt 2 of 5" in row["reasons"][1]
    last = row["last_error"]
    assert (last["stage"], last["outcome"], last["attempts"], last["gave_up"]) == ("download", "failed", 2, False)
    assert last["next_attempt_at"] > last["at"]


def test_http_404_gives_up_and_parks(db, docs):
    doc = docs.add("gone")
    docs.download_failed(doc, 404, "http_404", "HTTP 404 from the server", retryable=False)
    row = one(db, "gone")
    assert (row["state"], row["parked_stage"], row["availability"]) == ("parked", "download", "No")
    assert row["reason"] == "The file could not be downloaded: the server answered HTTP 404 (Not Found)."
    assert row["reasons"][1] == (
        "Gave up after 1 attempt. It is tried again when the publisher updates the file, "
        "or when an operator re-runs it."
    )
    assert row["last_error"]["gave_up"] is True
    assert row["last_error"]["next_attempt_at"] is None  # parked: it waits for a change, not for a time


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (1, "secure (TLS/SSL) connection"),
        (2, "character encoding could not be read"),
        (3, "URL is not supported"),
        (4, "registry has no cached copy"),
        (413, "larger than the 100 MB"),
        (503, "HTTP 503 (Service Unavailable)"),
    ],
)
def test_download_error_codes_in_words(db, docs, error, words):
    doc = docs.add(f"err-{error}")
    docs.download_failed(doc, error, f"code_{error}", "detail", retryable=False)
    assert words in one(db, f"err-{error}")["reason"]


def test_downloaded_waits_for_validation(db, docs):
    doc = docs.add("downloaded")
    docs.downloaded(doc)
    row = one(db, "downloaded")
    assert (row["state"], row["availability"], row["reasons"]) == ("downloaded", "Pending", [])
    assert row["timestamps"]["downloaded"] is not None


def test_schema_invalid_file_waits_for_the_safety_period(db, docs):
    doc = docs.add("fresh-invalid")
    docs.downloaded(doc, hours_ago=0.5)
    repo.set_schema_result(db, doc["id"], doc["hash"], valid=False, api_error=None)
    row = one(db, "fresh-invalid")
    assert row["state"] == "downloaded"
    assert row["availability"] == "Pending"
    assert "after the safety period" in row["reason"]
    # The period ends two hours after the download.
    ends = row["timestamps"]["downloaded"] + timedelta(hours=2)
    assert row["reason"].endswith(f"from {ends:%Y-%m-%d %H:%M} UTC.")


def test_schema_invalid_file_of_a_flagged_publisher_waits_for_unflag(db, docs):
    doc = docs.add("flooded", publisher="XM-DAC-2")
    docs.downloaded(doc, hours_ago=5)
    repo.set_schema_result(db, doc["id"], doc["hash"], valid=False, api_error=None)
    db.execute("UPDATE publisher SET black_flag = %s WHERE org_id = 'XM-DAC-2'", (SEEN,))
    row = one(db, "flooded")
    assert row["publisher_flagged_at"] == SEEN
    assert row["reason"].startswith("The publisher is paused since 2026-03-01 12:00 UTC")
    assert "more than 100 schema-invalid files within 2 hours" in row["reason"]
    # Past the safety period, the flag is the only thing it waits for.
    assert not any("safety period" in r for r in row["reasons"])


def test_validator_error_without_a_report(db, docs):
    doc = docs.add("huge")
    docs.downloaded(doc)
    repo.set_schema_result(db, doc["id"], doc["hash"], valid=None, api_error=413)
    row = one(db, "huge")
    assert row["errors"] == {"validation_api_error": 413}
    assert "larger than the validator accepts" in row["reason"]


def test_valid_file_validated(db, docs):
    doc = docs.add("valid")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True, meta=[True, True]))
    row = one(db, "valid")
    assert (row["state"], row["availability"], row["reasons"]) == ("validated", "Pending", [])
    v = row["validation"]
    assert (v["valid"], v["file_type"], v["iati_version"]) == (True, "iati-activities", "2.03")
    assert v["summary"] == {"critical": 0, "error": 1, "warning": 2, "advisory": 0}
    assert row["activities"]["in_file"] == 2
    assert row["timestamps"]["validated"] is not None


@pytest.mark.parametrize(
    ("last", "state"), [("clean", "cleaned"), ("flatten", "flattened"), ("lakify", "lakified"), ("index", "indexed")]
)
def test_progress_through_the_stages(db, docs, last, state):
    doc = docs.add(f"progress-{last}")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, last)
    row = one(db, f"progress-{last}")
    assert row["state"] == state
    if state == "lakified":  # no Solr connection in the tests' environment
        assert row["availability"] == "Indexing not configured"
        assert row["reasons"] == [status.NOT_INDEXED_HERE]
    else:
        assert row["availability"] == ("Yes" if state == "indexed" else "Pending")
        assert row["reasons"] == []
    if state == "indexed":
        assert row["indexed_version"] == "current"
        assert row["activities"]["indexed"] == 3
        assert row["timestamps"]["solrize_end"] == row["timestamps"]["last_solrize_end"]


def test_lakified_needs_both_flatten_and_lakify(db, docs):
    doc = docs.add("lake-only")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    repo.finish_clean(db, doc, ok=True, error=None)
    repo.finish_lakify(db, doc, ok=True, error=None)
    assert one(db, "lake-only")["state"] == "cleaned"


def test_organisation_file_is_not_applicable(db, docs):
    doc = docs.add("org-file")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True, file_type="iati-organisations"))
    repo.finish_clean(db, doc, ok=False, error=None)
    docs.outcome(doc, "clean", "skipped", "organisation_file", "an organisation file")
    row = one(db, "org-file")
    assert (row["state"], row["parked_stage"], row["availability"]) == ("parked", "clean", "N/A")
    assert row["reasons"] == ["This is an organisation file: the IATI datastore holds activity files only."]


def test_version_1_file_is_excluded(db, docs):
    doc = docs.add("legacy")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, version="1.05", critical=1))
    docs.outcome(doc, "clean", "skipped", "version_1x", "IATI 1.x")
    row = one(db, "legacy")
    assert (row["state"], row["availability"]) == ("parked", "No")
    assert row["reasons"] == ["The file uses IATI version 1.05: version 1 files are no longer accepted."]


def test_not_iati_file_is_excluded(db, docs):
    doc = docs.add("html-page")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, file_type="", version="", critical=1))
    row = one(db, "html-page")
    assert row["availability"] == "No"
    assert row["reason"].startswith("This is not a readable IATI file")


def test_unsupported_version_is_excluded(db, docs):
    doc = docs.add("future")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, version="2.99", critical=1))
    row = one(db, "future")
    assert row["availability"] == "No"
    assert "IATI version 2.99, which the datastore does not support" in row["reason"]


def test_schema_invalid_without_valid_activities_is_excluded(db, docs):
    doc = docs.add("all-bad")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, critical=4, meta=[False, False, False]))
    repo.finish_clean(db, doc, ok=False, error="No valid activities")
    docs.outcome(doc, "clean", "skipped", "no_valid_activities", "No valid activities")
    row = one(db, "all-bad")
    assert (row["state"], row["availability"]) == ("parked", "No")
    assert row["reason"] == (
        "The file fails the IATI schema (4 critical errors) and none of its 3 activities is "
        "valid: nothing from it can go to the datastore."
    )
    assert row["errors"] == {"clean_error": "No valid activities"}


def test_partly_valid_file_is_partially_available(db, docs):
    doc = docs.add("partial")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, critical=1, meta=[True, False, True]))
    docs.through(doc, "index", activities=2)
    row = one(db, "partial")
    assert (row["state"], row["availability"]) == ("indexed", "Partial")
    assert row["reason"] == (
        "The file fails the IATI schema (1 critical error): 2 of 3 activities kept; "
        "the invalid ones are left out of the datastore."
    )
    assert row["activities"] == {"in_file": 3, "valid": 2, "flattened": 2, "indexed": 2}


def test_changed_file_keeps_the_old_version_searchable(db, docs):
    doc = docs.add("republished")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "index")
    new = {**doc, "hash": _hash(999)}
    assert repo.upsert_document(db, new, SEEN)[0] == "updated"
    row = one(db, "republished")
    assert (row["state"], row["availability"], row["indexed_version"]) == (
        "pending_download",
        "Old version",
        "previous",
    )
    assert row["reasons"] == [
        "The previous version of this file is still searchable in the datastore while this version is processed."
    ]


def test_old_version_of_an_excluded_file(db, docs):
    doc = docs.add("broke-later")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "index")
    new = {**doc, "hash": _hash(1000)}
    repo.upsert_document(db, new, SEEN)
    docs.download_failed(new, 404, "http_404", "HTTP 404", retryable=False)
    row = one(db, "broke-later")
    assert (row["state"], row["availability"]) == ("parked", "Old version")
    assert row["reasons"][-1].endswith("is left out (see above).")


def test_empty_file(db, docs):
    doc = docs.add("empty")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "lakify", activities=0)
    assert "The file contains no activities." in one(db, "empty")["reasons"]


def test_flatten_gave_up_parks_until_another_service_resets_it(db, docs):
    doc = docs.add("unparseable")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "clean")
    repo.finish_flatten(db, doc, ok=False)
    docs.outcome(doc, "flatten", "failed", "parse_error", "Could not parse: line 3", retryable=False)
    row = one(db, "unparseable")
    assert (row["state"], row["parked_stage"], row["availability"]) == ("parked", "flatten", "No")
    assert row["reason"].startswith("Gave up at flattening after 1 attempt: Could not parse: line 3.")
    assert row["errors"] == {"flatten_api_error": 1}
    # datastore-services' "clear flattener" nulls the flatten columns: the document is live again.
    db.execute("UPDATE document SET flatten_api_error = NULL WHERE id = %s", (doc["id"],))
    row = one(db, "unparseable")
    assert (row["state"], row["parked_stage"], row["availability"]) == ("cleaned", None, "Pending")


def test_index_skipped_without_solr(db, docs):
    doc = docs.add("no-solr")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "lakify")
    docs.outcome(doc, "index", "skipped", "no_solr", "no Solr connection configured")
    row = one(db, "no-solr")
    assert (row["state"], row["parked_stage"]) == ("parked", "index")
    assert row["reason"] == "Left out at indexing: no Solr connection configured."


def test_credentials_in_urls_are_never_shown(db, docs):
    docs.add("with-userinfo")
    row = one(db, "with-userinfo")
    assert row["url"] == "https://example.org/with-userinfo.xml"
    assert "secret" not in status.format_status(row)


def test_listing_filters_and_pages(db, docs):
    for i in range(5):
        docs.add(f"m-{i}")
    gone = docs.add("r-gone", publisher="XM-DAC-2")
    docs.download_failed(gone, 404, "http_404", "HTTP 404", retryable=False)
    docs.add("r-new", publisher="XM-DAC-2")

    page = status.list_datasets(db, limit=3, offset=0, settings=SETTINGS)
    assert page["total"] == 7
    assert [r["name"] for r in page["items"]] == ["m-0", "m-1", "m-2"]
    page = status.list_datasets(db, limit=3, offset=6, settings=SETTINGS)
    assert [r["name"] for r in page["items"]] == ["r-new"]
    assert status.list_datasets(db, limit=3, offset=30, settings=SETTINGS)["total"] == 7

    by_name = status.list_datasets(db, publisher="RIVERBEND", settings=SETTINGS)
    by_org = status.list_datasets(db, publisher="XM-DAC-2", settings=SETTINGS)
    assert [r["name"] for r in by_name["items"]] == [r["name"] for r in by_org["items"]] == ["r-gone", "r-new"]

    parked = status.list_datasets(db, state="parked", settings=SETTINGS)
    assert [r["name"] for r in parked["items"]] == ["r-gone"]
    assert status.list_datasets(db, query="m-3", settings=SETTINGS)["total"] == 1
    assert status.list_datasets(db, query="%", settings=SETTINGS)["total"] == 0  # a literal, not a wildcard
    with pytest.raises(ValueError, match="unknown state"):
        status.list_datasets(db, state="bogus", settings=SETTINGS)


def test_state_counts(db, docs):
    docs.add("a")
    b = docs.add("b")
    docs.downloaded(b)
    c = docs.add("c")
    docs.download_failed(c, 404, "http_404", "HTTP 404", retryable=False)
    counts = repo.document_state_counts(db)
    assert counts == {**dict.fromkeys(status.STATES, 0), "pending_download": 1, "downloaded": 1, "parked": 1}


def test_format_status_for_the_cli(db, docs):
    doc = docs.add("partial-cli")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=False, critical=1, meta=[True, False, True]))
    docs.through(doc, "flatten", activities=2)
    docs.outcome(doc, "lakify", "failed", "storage_error", "blob storage timed out", retryable=True)
    text = status.format_status(one(db, "partial-cli"))
    lines = text.splitlines()
    assert lines[0] == f"partial-cli  (id {doc['id']})"
    assert "meadowlark — Meadowlark Trust (org id XM-DAC-1)" in lines[1]
    assert lines[2].startswith("state        Flattened; in the datastore: Pending")
    assert "2 of 3 activities kept" in text
    assert "Lakify (activity lake) failed (attempt 1 of 5): blob storage timed out." in text
    assert "last error   lakify failed storage_error: blob storage timed out (1 attempt; next try after" in text
    assert "report       invalid iati-activities 2.03; critical 1, error 1, warning 2, advisory 0" in text
    assert "activities   in file 3, valid 2, flattened 2" in text


# --- metrics (the same database reads, as gauges) ---------------------------------------------


def test_gauges_from_the_database(db, docs):
    from iati_refresher import metrics

    gone = docs.add("gone-m", publisher="XM-DAC-2")
    docs.download_failed(gone, 404, "http_404", "HTTP 404", retryable=False)
    flaky = docs.add("flaky-m")
    docs.download_failed(flaky, 0, "connection_error", "refused", retryable=True)
    docs.add("new-m")
    gauges = {(g.name, tuple(sorted(g.labels.items()))): g.value for g in metrics.collect(db, SETTINGS)}
    assert gauges[("registered_publishers", ())] == 2
    assert gauges[("registered_datasets", ())] == 3
    assert gauges[("datasets_to_download", ())] == 1  # the flaky one waits for its retry
    assert gauges[("datasets_parked", (("code", "http_404"), ("outcome", "gave_up"), ("stage", "download")))] == 1
    assert gauges[("datasets_retrying", (("code", "connection_error"), ("stage", "download")))] == 1
    assert gauges[("datasets_in_state", (("state", "parked"),))] == 1
    assert not any(name == "last_run_documents" for name, _ in gauges)  # no run recorded yet


def test_prometheus_text_groups_and_escapes():
    from iati_refresher.metrics import Gauge, render_prometheus

    text = render_prometheus(
        [
            Gauge("datasets_parked", 2, {"stage": "clean", "code": 'say "no"\\'}),
            Gauge("registered_datasets", 12),
            Gauge("datasets_parked", 1.5, {"stage": "index", "code": "x"}),
        ]
    )
    assert text.splitlines() == [
        "# HELP datasets_parked Datasets a stage skipped by rule or gave up on, by stage, outcome and code.",
        "# TYPE datasets_parked gauge",
        'datasets_parked{code="say \\"no\\"\\\\",stage="clean"} 2',
        'datasets_parked{code="x",stage="index"} 1.5',
        "# HELP registered_datasets Datasets (documents) known from the registry.",
        "# TYPE registered_datasets gauge",
        "registered_datasets 12",
    ]


def test_gauges_go_to_airflow_stats():
    from airflow.sdk.observability.stats import Stats

    from iati_refresher.metrics import Gauge, emit_stats, stats_name

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[tuple[str, float, dict | None]] = []

        def gauge(self, stat, value, *args, tags=None, **kwargs):
            if stat.endswith("broken"):
                raise OSError("statsd down")
            self.sent.append((stat, value, tags))

    gauges = [
        Gauge("datasets_to_index", 4),
        Gauge("datasets_parked", 1, {"stage": "clean", "code": "no valid/x"}),
        Gauge("broken", 1),
    ]
    recorder = Recorder()
    assert emit_stats(gauges, recorder) == 2  # a failing backend is logged, not raised
    assert recorder.sent == [
        ("iati_refresher.datasets_to_index", 4, None),
        ("iati_refresher.datasets_parked.no_valid_x.clean", 1, {"stage": "clean", "code": "no valid/x"}),
    ]
    assert stats_name(gauges[0]) == "iati_refresher.datasets_to_index"
    # Airflow's own Stats object accepts them (a no-op logger unless [metrics] configures one).
    assert emit_stats(gauges[:2], Stats) == 2


def test_a_lakified_dataset_waits_for_indexing_only_where_solr_is_configured(db, docs, monkeypatch):
    doc = docs.add("waits-for-solr")
    docs.downloaded(doc)
    docs.validated(doc, _report(valid=True))
    docs.through(doc, "lakify")
    from iati_refresher import connections

    monkeypatch.setattr(connections, "_PRELOADED", {})  # what another in-process test preloaded
    monkeypatch.setattr(status, "_INDEX_CONFIGURED", {})
    monkeypatch.setenv("AIRFLOW_CONN_SOLR", '{"conn_type": "http", "host": "http://solr:8983/solr"}')
    row = one(db, "waits-for-solr")
    assert (row["availability"], row["reasons"]) == ("Pending", [])
    monkeypatch.setattr(status, "_INDEX_CONFIGURED", {})
    monkeypatch.delenv("AIRFLOW_CONN_SOLR")
    assert one(db, "waits-for-solr")["availability"] == "Indexing not configured"
