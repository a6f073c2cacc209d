"""Shared pieces of the repository's statements."""

from __future__ import annotations

from typing import Any

import psycopg

NOW = "(now() AT TIME ZONE 'UTC')"


def one_row(cursor: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    """The one row a statement that always answers (count, RETURNING) returned."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row
