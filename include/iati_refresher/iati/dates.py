"""Date normalisation for flattened fields (what Solr ``pdate`` fields accept).

A flattened field is a date when its name contains one of :data:`DATE_FIELD_MARKERS`.
Its value becomes ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (milliseconds truncated), or is dropped
when it is not a usable date, so one bad value never makes Solr reject a document.

The reference's rules, and where this module deliberately differs (docs/DEVIATIONS.md):

* ``xsd:date`` values (``YYYY-MM-DD`` with an optional ``Z`` or ``±hh:mm``) keep their
  calendar day at midnight UTC; the offset is dropped, as in the reference.
* Date-times with an explicit offset are **converted to UTC** (the reference dropped the
  offset, shifting the instant by the offset).
* Anything else goes through ``dateutil``, but deterministically: a value without a year
  is dropped, a missing month or day becomes 1 (the reference took them from today's
  date), two-digit years pivot on a fixed century instead of today's, and time-zone
  *names* other than UTC/GMT/Z are ignored instead of depending on the machine's zone.
* Years are always written with four digits; values that are out of range (years above
  9999, huge numbers that overflow, invalid calendar dates) are dropped, never raised.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from dateutil import parser as _dateutil_parser

DATE_FIELD_MARKERS = ("iso_date", "value_date", "extraction_date", "_datetime")

# YYYY-MM-DD, optionally followed by a time and/or a zone: the shapes IATI data uses.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)
_UTC_NAMES = frozenset({"UTC", "GMT", "Z", "UT"})
# Missing month/day/time fields come from _DEFAULT; a second parse with a default that
# differs only in the year tells whether the text had a year at all.
_DEFAULT = datetime(2000, 1, 1)
_DEFAULT_OTHER_YEAR = datetime(2001, 1, 1)
_CACHE_LIMIT = 50_000
_cache: dict[str, str | None] = {}


class _FixedPivotInfo(_dateutil_parser.parserinfo):
    """Two-digit years pivot on 2000 (``00``-``49`` → 20xx, ``50``-``99`` → 19xx), never on today."""

    def convertyear(self, year: int, century_specified: bool = False) -> int:
        if year < 100 and not century_specified:
            return year + (2000 if year < 50 else 1900)
        return year


_PARSER = _dateutil_parser.parser(_FixedPivotInfo())


def is_date_field(name: str) -> bool:
    """Whether a flattened field name is normalised as a date."""
    return any(marker in name for marker in DATE_FIELD_MARKERS)


def format_instant(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for a naive (UTC) datetime; the year always has 4 digits."""
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def normalise_date(value: str) -> str | None:
    """The Solr form of a date value, or ``None`` when it is not a usable date.

    :param value: the stripped attribute or element text.
    :return: ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, or ``None`` (the caller drops the value).
    """
    cached = _cache.get(value, _cache)
    if cached is not _cache:
        return cached  # type: ignore[return-value]
    result = _normalise(value)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[value] = result
    return result


def _normalise(value: str) -> str | None:
    m = _ISO.fullmatch(value)
    if m is not None:
        return _from_iso(m)
    return _from_dateutil(value)


def _from_iso(m: re.Match[str]) -> str | None:
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        if hour is None:
            # xsd:date: the offset says where the day is, not an instant; keep the day.
            return format_instant(datetime(int(year), int(month), int(day)))
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro)
        if zone and zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 23 or minutes > 59:
                return None
            moment -= sign * timedelta(hours=hours, minutes=minutes)
        return format_instant(moment)
    except (ValueError, OverflowError):
        return None


def _tzinfos(name: str | None, offset: int | None) -> int | None:
    """Explicit numeric offsets and UTC names are honoured; other zone names are ignored."""
    if offset is not None:
        return offset
    if name is not None and name.upper() in _UTC_NAMES:
        return 0
    return None


def _from_dateutil(value: str) -> str | None:
    try:
        first = _PARSER.parse(value, default=_DEFAULT, tzinfos=_tzinfos)
        second = _PARSER.parse(value, default=_DEFAULT_OTHER_YEAR, tzinfos=_tzinfos)
    except (ValueError, OverflowError, TypeError, ArithmeticError):
        return None  # includes a yearless 29 February, which has no year to be placed in
    if first.year != second.year:
        return None  # no year in the text: not a date we can place
    try:
        if first.tzinfo is not None:
            first = first.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return format_instant(first)
