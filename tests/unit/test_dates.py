"""Date normalisation for flattened date fields (iati_refresher.iati.dates)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from iati_refresher.iati import dates
from iati_refresher.iati.dates import format_instant, is_date_field, normalise_date


@pytest.fixture(autouse=True)
def _fresh_cache():
    dates._cache.clear()
    yield
    dates._cache.clear()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("activity_date_iso_date", True),
        ("budget_value_value_date", True),
        ("fss_extraction_date", True),
        ("last_updated_datetime", True),
        ("dataset_generated_datetime", True),
        ("iati_activities_generated_datetime", True),
        ("activity_date_type", False),
        ("fss_phaseout_year", False),
        ("datetime", False),  # the marker is "_datetime"
    ],
)
def test_date_fields_are_recognised_by_name(name, expected):
    assert is_date_field(name) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2014-01-01", "2014-01-01T00:00:00.000Z"),
        ("2014-09-10T07:15:37Z", "2014-09-10T07:15:37.000Z"),
        ("2023-07-17T08:05:08.160000+00:00", "2023-07-17T08:05:08.160Z"),
        ("2023-07-17T08:05:08.1234567", "2023-07-17T08:05:08.123Z"),  # truncated, not rounded
        ("2023-07-17T08:05:08.9999", "2023-07-17T08:05:08.999Z"),
        ("2023-07-17T08:05:08.5Z", "2023-07-17T08:05:08.500Z"),
        ("2014-09-10T07:15", "2014-09-10T07:15:00.000Z"),
        ("2020/01/02 12:30", "2020-01-02T12:30:00.000Z"),
        ("20200102", "2020-01-02T00:00:00.000Z"),
        ("05/06/2014", "2014-05-06T00:00:00.000Z"),  # month first, as the reference read it
    ],
)
def test_values_become_solr_instants(raw, expected):
    assert normalise_date(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # an instant with an offset is converted to UTC (the reference dropped the offset)
        ("2023-07-17T08:05:08.160000+01:00", "2023-07-17T07:05:08.160Z"),
        ("2023-01-01T23:30:00-01:00", "2023-01-02T00:30:00.000Z"),
        ("2014-09-10T07:15:37+0530", "2014-09-10T01:45:37.000Z"),
        # an xsd:date with an offset names a calendar day: the day is kept
        ("2023-07-17+05:00", "2023-07-17T00:00:00.000Z"),
        ("2023-07-17-11:00", "2023-07-17T00:00:00.000Z"),
        ("2023-07-17Z", "2023-07-17T00:00:00.000Z"),
        # zone names: UTC kept, unknown names ignored rather than guessed
        ("2014-09-10 07:15:37 UTC", "2014-09-10T07:15:37.000Z"),
        ("2014-09-10 07:15:37 EST", "2014-09-10T07:15:37.000Z"),
    ],
)
def test_time_zones(raw, expected):
    assert normalise_date(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2014", "2014-01-01T00:00:00.000Z"),
        ("2014-05", "2014-05-01T00:00:00.000Z"),
        ("May 2014", "2014-05-01T00:00:00.000Z"),
        ("05/06/14", "2014-05-06T00:00:00.000Z"),
        ("05/06/75", "1975-05-06T00:00:00.000Z"),
    ],
)
def test_partial_dates_are_completed_deterministically(raw, expected):
    assert normalise_date(raw) == expected


@pytest.mark.parametrize("raw", ["10", "31 Jan", "Mon", "29 Feb", "1"])
def test_values_without_a_year_are_dropped(raw):
    assert normalise_date(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "cat",
        "",
        "12021-11-05",  # years beyond 9999 do not fit a Solr pdate via Python
        "2023-15-40",
        "2023-02-30",
        "2023-07-17T24:00:00",
        "99999999999999999999",  # overflowed in the reference and failed the whole file
        "99999999999",
        "0001-01-01T00:00:00+01:00",  # converting to UTC leaves the calendar
        "2023-07-17T08:05:08+25:00",
    ],
)
def test_unusable_values_are_dropped_not_raised(raw):
    assert normalise_date(raw) is None


def test_years_below_1000_keep_four_digits():
    assert normalise_date("0201-01-01") == "0201-01-01T00:00:00.000Z"
    assert format_instant(datetime(999, 12, 31, 23, 59, 59, 999999)) == "0999-12-31T23:59:59.999Z"


def test_result_does_not_depend_on_the_machine_time_zone(monkeypatch):
    values = ["2014-09-10T07:15:37Z", "2014-09-10 07:15:37 EST", "2014-09-10 07:15:37 GMT", "2014"]
    results = {}
    for zone in ("UTC", "America/New_York", "Europe/London", "Asia/Kolkata"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        dates._cache.clear()
        results[zone] = [normalise_date(v) for v in values]
    monkeypatch.delenv("TZ")
    time.tzset()
    assert len({tuple(r) for r in results.values()}) == 1, results
    assert results["UTC"] == [
        "2014-09-10T07:15:37.000Z",
        "2014-09-10T07:15:37.000Z",
        "2014-09-10T07:15:37.000Z",
        "2014-01-01T00:00:00.000Z",
    ]


def test_result_does_not_depend_on_today(monkeypatch):
    class LaterDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2090, 7, 15, tzinfo=tz)

    before = [normalise_date(v) for v in ("2014", "05/06/14", "Jun 2014")]
    dates._cache.clear()
    monkeypatch.setattr("dateutil.parser._parser.datetime.datetime", LaterDatetime)
    after = [normalise_date(v) for v in ("2014", "05/06/14", "Jun 2014")]
    assert before == after == ["2014-01-01T00:00:00.000Z", "2014-05-06T00:00:00.000Z", "2014-06-01T00:00:00.000Z"]


def test_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(dates, "_CACHE_LIMIT", 10)
    for day in range(1, 29):
        assert normalise_date(f"2020-02-{day:02d}") == f"2020-02-{day:02d}T00:00:00.000Z"
    assert len(dates._cache) <= 10
