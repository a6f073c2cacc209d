"""What every task body shares: its database connection (schema checked), the clock, error text."""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from datetime import UTC, datetime

from iati_refresher.db import migrate
from iati_refresher.db.connection import open_refresher_db
from iati_refresher.settings import Settings, get_settings


def exception_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[:1000]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def database(settings: Settings | None = None, *, check_schema: bool = True):
    settings = settings or get_settings()
    conn = open_refresher_db()
    try:
        if check_schema:
            migrate.require(conn, migrate.latest_number(settings.migrations_dir))
        yield conn
    finally:
        conn.close()
