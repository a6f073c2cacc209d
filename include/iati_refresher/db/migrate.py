"""Numbered migrations: ``migrations/NNNN_name.sql`` with ``-- +up`` and ``-- +down`` sections.

Migrations 0-27 are a reconstructed history whose end state is the reference refresher's
schema at its migration 27 (other IATI services read it); 28 onwards are this project's
additions.  The runner moves the database up or down to any number in one transaction,
under an advisory lock, and records the number in ``version`` as the reference does, so a
database created by the reference refresher (at 27) upgrades in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from iati_refresher import __version__
from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
NO_SCHEMA = -1


class SchemaMismatch(RuntimeError):
    """The database is at another migration than this code expects."""


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    up: str
    down: str


def load_migrations(directory: str | Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(Path(directory).iterdir()):
        m = _FILE.match(path.name)
        if not m:
            continue
        text = path.read_text(encoding="utf-8")
        if "-- +up" not in text or "-- +down" not in text:
            raise ValueError(f"{path.name}: needs '-- +up' and '-- +down' sections")
        up = text.split("-- +up", 1)[1].split("-- +down", 1)[0]
        down = text.split("-- +down", 1)[1]
        found.append(Migration(int(m.group(1)), m.group(2), up.strip(), down.strip()))
    numbers = [m.number for m in found]
    if numbers != list(range(len(numbers))):
        raise ValueError(f"migrations must be numbered 0..N without gaps, found {numbers}")
    return found


def latest_number(directory: str | Path) -> int:
    return len(load_migrations(directory)) - 1


def current(conn: Db) -> int:
    return repo.current_migration(conn)


def migrate(conn: Db, directory: str | Path, target: int | None = None) -> tuple[int, int]:
    """Move the database to ``target`` (default: the latest).  Returns (from, to).

    ``target = -1`` removes the whole schema.  Everything happens in one transaction:
    on any error nothing changes.
    """
    migrations = load_migrations(directory)
    latest = len(migrations) - 1
    target = latest if target is None else target
    if not NO_SCHEMA <= target <= latest:
        raise ValueError(f"target migration {target} is outside -1..{latest}")
    try:
        repo.lock_migrations(conn)
        start = repo.current_migration(conn)
        if start > latest:
            raise SchemaMismatch(
                f"the database is at migration {start}, newer than this code knows ({latest}); "
                "upgrade the refresher instead of downgrading the database"
            )
        if target > start:
            for mig in migrations[start + 1 : target + 1]:
                conn.execute(mig.up)
        elif target < start:
            for mig in reversed(migrations[target + 1 : start + 1]):
                conn.execute(mig.down)
        if target != start and target >= 0:
            repo.set_migration(conn, __version__, target)
        conn.commit()
        return start, target
    except BaseException:
        conn.rollback()
        raise


def require(conn: Db, expected: int) -> None:
    """Refuse to work against a database at another migration (every task calls this)."""
    found = repo.current_migration(conn)
    conn.rollback()
    if found != expected:
        hint = "run the iati_refresh DAG (it migrates first) or `refresher db upgrade`"
        raise SchemaMismatch(f"the refresher database is at migration {found}, this code needs {expected}; {hint}")
