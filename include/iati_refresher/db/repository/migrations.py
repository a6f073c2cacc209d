"""The migration runner's bookkeeping (``version``, the advisory lock)."""

from __future__ import annotations

from iati_refresher.db.types import Db


def lock_migrations(conn: Db) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(727271)")


def current_migration(conn: Db) -> int:
    exists = conn.execute("SELECT to_regclass('public.version') AS t").fetchone()
    if not exists or exists["t"] is None:
        return -1
    row = conn.execute("SELECT migration FROM public.version LIMIT 1").fetchone()
    return -1 if row is None else int(row["migration"])


def set_migration(conn: Db, number: str, migration: int) -> None:
    updated = conn.execute("UPDATE public.version SET number = %s, migration = %s", (number, migration)).rowcount
    if not updated:
        conn.execute("INSERT INTO public.version (number, migration) VALUES (%s, %s)", (number, migration))
