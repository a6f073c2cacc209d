"""``refresher``: the operator's command line.

    refresher db upgrade [N] | db downgrade N | db current
    refresher download URL OUTFILE          the download stage's logic for one URL
    refresher validate FILE [--meta]        the built-in validator's report (JSON)
    refresher clean FILE REPORT.json OUTFILE
    refresher flatten FILE                  flattened activities as JSON lines
    refresher lakify FILE OUTDIR            the activity lake files for one file
    refresher status DATASET [--json]       where a dataset is in the pipeline, and why
    refresher settings                      every setting with its current value

The database comes from the Airflow connection ``refresher_db``
(``AIRFLOW_CONN_REFRESHER_DB=postgresql://user:pass@host:5432/db``), as in the DAGs.
Exit codes: 0 ok, 1 the operation reported a problem (or bad input), 2 bad usage or a rule excluded the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from iati_refresher.settings import get_settings


class UsageError(Exception):
    pass


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    return path


# --- db ------------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from iati_refresher.db import migrate
    from iati_refresher.db.connection import connection, resolve_conninfo

    settings = get_settings()
    latest = migrate.latest_number(settings.migrations_dir)
    with connection(resolve_conninfo()) as conn:
        if args.action == "current":
            current = migrate.current(conn)
            state = "up to date" if current == latest else f"code expects {latest}"
            print(f"migration {current} ({state})")
            return 0 if current == latest else 1
        if args.action == "upgrade":
            target = latest if args.number is None else args.number
            if target < migrate.current(conn):
                raise UsageError(f"upgrade target {target} is below the current migration; use downgrade")
        else:
            if args.number is None:
                raise UsageError("downgrade needs a target migration number")
            target = args.number
            if target > migrate.current(conn):
                raise UsageError(f"downgrade target {target} is above the current migration; use upgrade")
        before, after = migrate.migrate(conn, settings.migrations_dir, target)
    print(f"migrated {before} → {after}")
    return 0


# --- stage tools ------------------------------------------------------------------------------


def cmd_download(args: argparse.Namespace) -> int:
    from iati_refresher.stages.download import fetch_to_file

    settings = get_settings()
    result = fetch_to_file(args.url, args.outfile, settings)
    payload = {k: v for k, v in vars(result).items() if not k.startswith("_")}
    if payload.get("encoding") is not None and not isinstance(payload["encoding"], str):
        payload["encoding"] = getattr(payload["encoding"], "encoding", str(payload["encoding"]))
    if result.download_error is None:
        print(f"stored {args.outfile}: {result.bytes} bytes, sha1 {result.sha1}, encoding {payload.get('encoding')}")
    else:
        print(f"download_error {result.download_error}: {result.message}")
    if args.json:
        _print_json(payload)
    return 0 if result.download_error is None else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from iati_refresher.validation.builtin import validate_file

    status, report = validate_file(_existing_file(args.file), meta=args.meta)
    _print_json(report)
    print(f"HTTP-equivalent status {status}", file=sys.stderr)
    return 0 if report.get("valid") else 1


def cmd_clean(args: argparse.Namespace) -> int:
    from iati_refresher.stages.clean import cli_clean

    return cli_clean(_existing_file(args.file), _existing_file(args.report), args.outfile, sys.stderr)


def cmd_flatten(args: argparse.Namespace) -> int:
    from iati_refresher.stages.flatten import cli_flatten

    return cli_flatten(_existing_file(args.file), sys.stdout, sys.stderr)


def cmd_lakify(args: argparse.Namespace) -> int:
    from iati_refresher.stages.lakify import cli_lakify

    return cli_lakify(_existing_file(args.file), args.outdir, sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from iati_refresher import status
    from iati_refresher.db.connection import connection, resolve_conninfo

    with connection(resolve_conninfo()) as conn:
        rows = status.dataset_status(conn, args.dataset)
    if not rows:
        print(f"no dataset with id or name {args.dataset!r}")
        return 1
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(status.format_status(row))
    return 0


def cmd_settings(_args: argparse.Namespace) -> int:
    for name, env, value in get_settings().describe():
        print(f"{name:28} {env:42} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refresher", description=__doc__.split("\n\n")[0].strip("` "))
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("number", nargs="?", type=int, help="target migration (upgrade: default latest)")
    db.set_defaults(func=cmd_db)

    p = sub.add_parser("download", help="download one URL exactly as the pipeline would")
    p.add_argument("url")
    p.add_argument("outfile")
    p.add_argument("--json", action="store_true", help="also print the full outcome as JSON")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("validate", help="validate a local file with the built-in validator")
    p.add_argument("file")
    p.add_argument("--meta", action="store_true", help="include the per-activity list")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("clean", help="keep only the activities a report marks valid")
    p.add_argument("file")
    p.add_argument("report")
    p.add_argument("outfile")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("flatten", help="flatten a file to JSON lines on stdout")
    p.add_argument("file")
    p.set_defaults(func=cmd_flatten)

    p = sub.add_parser("lakify", help="write one XML and one JSON per activity")
    p.add_argument("file")
    p.add_argument("outdir")
    p.set_defaults(func=cmd_lakify)

    p = sub.add_parser("status", help="where a dataset is in the pipeline, and why")
    p.add_argument("dataset", help="dataset id or name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("settings", help="every setting, its environment variable and value")
    p.set_defaults(func=cmd_settings)
    return parser


def _without_airflow() -> None:
    """The CLI reads connections from AIRFLOW_CONN_* variables and opens its clients without
    importing Airflow (a command answers in a fraction of a second, not after Airflow's import)."""
    from iati_refresher import connections, storage
    from iati_refresher.db import connection

    connections.use_environment_only()
    storage.LIGHT_CLIENTS[0] = True
    connection.LIGHT_CLIENTS[0] = True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _without_airflow()
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"refresher: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-line error for operators, not a traceback
        from iati_refresher.db.connection import DatabaseNotConfigured
        from iati_refresher.db.migrate import SchemaMismatch
        from iati_refresher.iati.xml import XmlRefused

        if isinstance(exc, DatabaseNotConfigured | SchemaMismatch | XmlRefused | ValueError | OSError):
            print(f"refresher: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
