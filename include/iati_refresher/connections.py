"""Find a connection's endpoint and secrets without importing Airflow when we can.

Tasks resolve connections through Airflow (``BaseHook.get_connection``), which also covers
``AIRFLOW_CONN_*`` environment variables, secrets backends and the metadata database.
The CLI and worker processes must not pay Airflow's import cost for the common case,
so :func:`get_connection` first reads ``AIRFLOW_CONN_<ID>`` itself (URI or JSON form,
the same rules as Airflow) and only then falls back to Airflow.

The connection ids are the constants below; the README's configuration table lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

REFRESHER_DB = "refresher_db"
BLOB_STORAGE = "refresher_blob"
REGISTRY = "iati_registry"
VALIDATOR = "iati_validator"
SOLR = "solr"
SLACK = "slack_oncall"
COMMSHUB = "iati_commshub"

ALL_CONNECTION_IDS = (REFRESHER_DB, BLOB_STORAGE, REGISTRY, VALIDATOR, SOLR, SLACK, COMMSHUB)


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection the package uses (secrets included: never log it)."""

    conn_id: str
    conn_type: str = ""
    host: str = ""
    port: int | None = None
    login: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, conn_id: str, conn: Any) -> ConnectionInfo:
        """The parts of an Airflow ``Connection`` object."""
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        return cls(
            conn_id=conn_id,
            conn_type=conn.conn_type or "",
            host=conn.host or "",
            port=conn.port,
            login=conn.login or "",
            password=conn.password or "",
            schema=conn.schema or "",
            extra=dict(extra or {}),
        )

    def base_url(self, default_scheme: str = "http") -> str:
        """``scheme://host[:port][/schema]`` for HTTP-style connections.

        A host that already carries a scheme (``https://example.org/path``) is used as is.
        """
        host = self.host.rstrip("/")
        if "://" in host:
            url = host
        else:
            scheme = self.extra.get("scheme") or (
                self.conn_type if self.conn_type in ("http", "https") else default_scheme
            )
            url = f"{scheme}://{host}"
        if self.port and "://" not in self.host:
            url = f"{url}:{self.port}"
        if self.schema:
            url = f"{url}/{self.schema.strip('/')}"
        return url


def parse_connection(conn_id: str, value: str) -> ConnectionInfo:
    """Parse an ``AIRFLOW_CONN_*`` value (JSON or URI form)."""
    value = value.strip()
    if value.startswith("{"):
        raw = json.loads(value)
        raw_extra = raw.get("extra") or {}
        if isinstance(raw_extra, str):
            raw_extra = json.loads(raw_extra) if raw_extra else {}
        return ConnectionInfo(
            conn_id=conn_id,
            conn_type=str(raw.get("conn_type") or ""),
            host=str(raw.get("host") or ""),
            port=int(raw["port"]) if raw.get("port") not in (None, "") else None,
            login=str(raw.get("login") or ""),
            password=str(raw.get("password") or ""),
            schema=str(raw.get("schema") or ""),
            extra=dict(raw_extra),
        )
    parts = urlsplit(value)
    conn_type = parts.scheme.replace("-", "_")
    if conn_type == "postgresql":
        conn_type = "postgres"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "__extra__" in query:
        extra: dict[str, Any] = json.loads(query.pop("__extra__"))
    else:
        extra = dict(query)
    # The host may carry an encoded scheme and path (http://https%3A%2F%2Fexample.org%2Fapi),
    # so take it from the netloc rather than urlsplit's lower-cased ``hostname``.
    host = parts.netloc.rsplit("@", 1)[-1]
    if re.search(r":\d+$", host):
        host = host.rsplit(":", 1)[0]
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=unquote(host),
        port=parts.port,
        login=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        schema=unquote(parts.path.lstrip("/")),
        extra=extra,
    )


_PRELOADED: dict[str, ConnectionInfo | None] = {}


def preload(connections: dict[str, ConnectionInfo | None]) -> None:
    """Fix the answer for these connection ids in this process.

    Worker processes of a task cannot ask Airflow for connections (only the task process
    talks to the API server), so the task resolves them once and hands them over.
    """
    _PRELOADED.update(connections)


@contextlib.contextmanager
def preloaded(connections: dict[str, ConnectionInfo | None]) -> Iterator[None]:
    """:func:`preload` for the duration of a block (thread pools in the task process)."""
    saved = dict(_PRELOADED)
    _PRELOADED.update(connections)
    try:
        yield
    finally:
        _PRELOADED.clear()
        _PRELOADED.update(saved)


def resolve_all(conn_ids: tuple[str, ...] = ALL_CONNECTION_IDS) -> dict[str, ConnectionInfo | None]:
    return {conn_id: get_connection(conn_id) for conn_id in conn_ids}


def get_connection(conn_id: str, *, use_airflow: bool = True) -> ConnectionInfo | None:
    """The connection ``conn_id``, or ``None`` when it is not configured anywhere."""
    if conn_id in _PRELOADED:
        return _PRELOADED[conn_id]
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if value:
        return parse_connection(conn_id, value)
    if not use_airflow:
        return None
    return _from_airflow(conn_id)


def _from_airflow(conn_id: str) -> ConnectionInfo | None:
    try:
        from airflow.sdk import BaseHook
    except ImportError:  # pragma: no cover - Airflow is a dependency, but keep the CLI usable
        return None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no metadata database reachable from the CLI
        return None
    return ConnectionInfo.of(conn_id, conn)
