"""Migrations on real PostgreSQL: the reference schema at 27, round trips, refusal on mismatch."""

from __future__ import annotations

import psycopg
import pytest

from iati_refresher.db import migrate
from iati_refresher.db.connection import connect
from iati_refresher.settings import get_settings

MIGRATIONS = get_settings().migrations_dir

# The reference schema at its migration 27 (columns, types, nullability), from its facts.
REFERENCE_27 = {
    "document": {
        "id": ("character varying", "NO"),
        "hash": ("character varying", "NO"),
        "url": ("character varying", "NO"),
        "first_seen": ("timestamp without time zone", "NO"),
        "last_seen": ("timestamp without time zone", "NO"),
        "modified": ("timestamp without time zone", "YES"),
        "downloaded": ("timestamp without time zone", "YES"),
        "download_error": ("integer", "YES"),
        "validation_request": ("timestamp without time zone", "YES"),
        "validation_api_error": ("integer", "YES"),
        "publisher": ("character varying", "YES"),
        "flatten_start": ("timestamp without time zone", "YES"),
        "flatten_end": ("timestamp without time zone", "YES"),
        "flatten_api_error": ("integer", "YES"),
        "flattened_activities": ("jsonb", "YES"),
        "solrize_start": ("timestamp without time zone", "YES"),
        "solrize_end": ("timestamp without time zone", "YES"),
        "solr_api_error": ("text", "YES"),
        "regenerate_validation_report": ("boolean", "NO"),
        "lakify_start": ("timestamp without time zone", "YES"),
        "lakify_end": ("timestamp without time zone", "YES"),
        "lakify_error": ("character varying", "YES"),
        "validation": ("integer", "YES"),
        "solrize_reindex": ("boolean", "NO"),
        "file_schema_valid": ("boolean", "YES"),
        "clean_start": ("timestamp without time zone", "YES"),
        "clean_end": ("timestamp without time zone", "YES"),
        "clean_error": ("character varying", "YES"),
        "name": ("character varying", "YES"),
        "last_solrize_end": ("timestamp without time zone", "YES"),
        "cached_dataset_url": ("character varying", "YES"),
    },
    "publisher": {
        "org_id": ("character varying", "NO"),
        "name": ("character varying", "NO"),
        "description": ("character varying", "YES"),
        "title": ("character varying", "NO"),
        "state": ("character varying", "YES"),
        "image_url": ("character varying", "YES"),
        "country_code": ("character varying", "YES"),
        "created": ("timestamp without time zone", "NO"),
        "last_seen": ("timestamp without time zone", "NO"),
        "package_count": ("integer", "YES"),
        "iati_id": ("character varying", "YES"),
        "black_flag": ("timestamp without time zone", "YES"),
        "black_flag_notified": ("boolean", "YES"),
    },
    "validation": {
        "document_hash": ("character varying", "NO"),
        "document_id": ("character varying", "NO"),
        "document_url": ("character varying", "NO"),
        "created": ("timestamp without time zone", "NO"),
        "valid": ("boolean", "NO"),
        "report": ("jsonb", "NO"),
        "publisher": ("character varying", "YES"),
        "id": ("integer", "NO"),
        "publisher_name": ("character varying", "YES"),
    },
    "adhoc_validation": {
        "id": ("integer", "NO"),
        "guid": ("character varying", "YES"),
        "filename": ("character varying", "YES"),
        "user_email": ("character varying", "YES"),
        "created": ("timestamp without time zone", "YES"),
        "validated": ("timestamp without time zone", "YES"),
        "validation_api_error": ("character varying", "YES"),
        "valid": ("boolean", "YES"),
        "report": ("jsonb", "YES"),
        "session_id": ("character varying", "YES"),
    },
    "version": {"number": ("character varying", "NO"), "migration": ("integer", "NO")},
}


def columns(conn: psycopg.Connection) -> dict[str, dict[str, tuple[str, str]]]:
    rows = conn.execute(
        """SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"""
    ).fetchall()
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for r in rows:
        out.setdefault(r["table_name"], {})[r["column_name"]] = (r["data_type"], r["is_nullable"])
    return out


def schema_fingerprint(conn: psycopg.Connection) -> tuple:
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
    ).fetchall()
    constraints = conn.execute(
        """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
            WHERE connamespace = 'public'::regnamespace ORDER BY conname"""
    ).fetchall()
    return (columns(conn), [tuple(r.values()) for r in indexes], [tuple(r.values()) for r in constraints])


def test_migration_27_is_the_reference_schema(empty_db: str) -> None:
    with connect(empty_db) as conn:
        assert migrate.migrate(conn, MIGRATIONS, 27) == (-1, 27)
        assert columns(conn) == REFERENCE_27
        names = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname='public'")}
        assert {
            "refresher_pkey",
            "fki_file_id",
            "fki_file_hash",
            "fki_file_url",
            "fki_publisher",
            "Publisher_pkey",
            "validation_pkey",
        } <= names
        fks = conn.execute(
            """SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint
                WHERE conrelid = 'public.document'::regclass AND contype = 'f' ORDER BY 1"""
        ).fetchall()
        assert [r["d"] for r in fks] == [
            "FOREIGN KEY (publisher) REFERENCES publisher(org_id) ON DELETE CASCADE",
            "FOREIGN KEY (validation) REFERENCES validation(id)",
        ]
        assert conn.execute("SELECT migration FROM version").fetchall() == [{"migration": 27}]


def test_round_trip_zero_latest_zero_latest(empty_db: str) -> None:
    latest = migrate.latest_number(MIGRATIONS)
    with connect(empty_db) as conn:
        migrate.migrate(conn, MIGRATIONS, 0)
        at_zero = schema_fingerprint(conn)
        migrate.migrate(conn, MIGRATIONS)
        at_latest = schema_fingerprint(conn)
        assert migrate.current(conn) == latest
        assert migrate.migrate(conn, MIGRATIONS, 0) == (latest, 0)
        assert schema_fingerprint(conn) == at_zero
        migrate.migrate(conn, MIGRATIONS)
        assert schema_fingerprint(conn) == at_latest
        migrate.migrate(conn, MIGRATIONS, -1)
        assert columns(conn) == {}


def test_every_single_step_round_trips(empty_db: str) -> None:
    latest = migrate.latest_number(MIGRATIONS)
    with connect(empty_db) as conn:
        for n in range(latest + 1):
            migrate.migrate(conn, MIGRATIONS, n)
            before = schema_fingerprint(conn)
            if n < latest:
                migrate.migrate(conn, MIGRATIONS, n + 1)
                migrate.migrate(conn, MIGRATIONS, n)
                assert schema_fingerprint(conn) == before, f"migration {n + 1} does not round trip"


def test_failed_migration_changes_nothing(empty_db: str, tmp_path) -> None:
    for mig in migrate.load_migrations(MIGRATIONS)[:2]:
        (tmp_path / f"{mig.number:04d}_{mig.name}.sql").write_text(f"-- +up\n{mig.up}\n-- +down\n{mig.down}\n")
    (tmp_path / "0002_broken.sql").write_text("-- +up\nALTER TABLE nowhere ADD COLUMN x int;\n-- +down\nSELECT 1;\n")
    with connect(empty_db) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            migrate.migrate(conn, tmp_path)
        assert migrate.current(conn) == -1
        assert columns(conn) == {}


def test_tasks_refuse_a_database_at_another_migration(empty_db: str) -> None:
    with connect(empty_db) as conn:
        migrate.migrate(conn, MIGRATIONS, 27)
        with pytest.raises(migrate.SchemaMismatch, match="at migration 27, this code needs"):
            migrate.require(conn, migrate.latest_number(MIGRATIONS))


def test_reference_database_upgrades_in_place(empty_db: str) -> None:
    """A database left at 27 by the reference refresher keeps its rows through our upgrade."""
    with connect(empty_db) as conn:
        migrate.migrate(conn, MIGRATIONS, 27)
        conn.execute(
            "INSERT INTO publisher (org_id, name, title, created, last_seen) VALUES ('o', 'p', 'P', now(), now())"
        )
        conn.execute(
            """INSERT INTO document (id, hash, url, first_seen, last_seen, publisher, downloaded)
               VALUES ('d', 'h', 'http://x', now(), now(), 'o', now())"""
        )
        conn.commit()
        migrate.migrate(conn, MIGRATIONS)
        row = conn.execute("SELECT id, hash, downloaded IS NOT NULL AS dl FROM document").fetchone()
        assert row == {"id": "d", "hash": "h", "dl": True}
