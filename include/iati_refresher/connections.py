"""Find a connection's endpoint and secrets: through Airflow wherever Airflow runs.

In a task, the DAG processor and the API server, :func:`get_connection` asks Airflow
(``BaseHook.get_connection``): Airflow's own order applies (a configured secrets backend,
then ``AIRFLOW_CONN_*`` variables, then the metadata database or the API server), and
Airflow masks the secrets it returns in every log.  Only "not found" means "not
configured"; any other error raises :class:`ConnectionLookupFailed` (retryable), never a
silent default.  Whether a missing connection may fall back to an embedded default is the
callers' decision, and only embedded runs (``REFRESHER_EMBEDDED``) allow it.

Stage worker processes cannot ask Airflow: the task resolves the connections once and
hands them over (:func:`preload`).  The ``refresher`` CLI calls
:func:`use_environment_only`: it then reads ``AIRFLOW_CONN_<ID>`` itself (URI or JSON form,
parsed as Airflow's ``Connection`` parses them — a test holds the two together) and does
not pay Airflow's import.

The connection ids are the constants below; the README's configuration table lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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
            parts = urlsplit(host)
            if self.port and parts.port is None:  # a port in its own field, as the UI's form has it
                url = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{self.port}"))
        else:
            scheme = self.extra.get("scheme") or (
                self.conn_type if self.conn_type in ("http", "https") else default_scheme
            )
            url = f"{scheme}://{host}"
            if self.port:
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
    return _parse_uri(conn_id, value)


def _parse_uri(conn_id: str, uri: str) -> ConnectionInfo:
    """The URI form, by Airflow's rules (``Connection.from_uri``): ``type://`` then either a
    host, or a host that carries its own scheme (``http://https%3A%2F%2Fexample.org%2Fapi``
    or ``type://https://…``); the host is lower-cased unless it holds a path."""
    if uri.count("://") > 2:
        raise ValueError(f"invalid connection URI for {conn_id!r}")
    conn_type = urlsplit(uri).scheme
    with_protocol = uri.count("://") == 2
    rest = uri.replace(f"{conn_type}://", "" if with_protocol else "//", 1)
    parts = urlsplit(rest)
    hostname = unquote(parts.hostname or "")
    if "/" in hostname:  # an encoded scheme and path: keep its case, as Airflow does
        hostname = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
        hostname = unquote(hostname)
    if with_protocol and hostname:
        hostname = f"{parts.scheme}://{hostname}"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra: dict[str, Any] = json.loads(query["__extra__"]) if "__extra__" in query else dict(query)
    normalized = conn_type.replace("-", "_")
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type="postgres" if normalized == "postgresql" else normalized,
        host=hostname,
        port=parts.port,
        login=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        schema=unquote(parts.path[1:]),
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


class ConnectionLookupFailed(RuntimeError):
    """Looking a connection up failed for another reason than "not found" (a secrets backend
    or the API server erred): the task fails, retryably, and nothing falls back to a default."""

    def __init__(self, conn_id: str, error: BaseException):
        super().__init__(
            f"looking up the connection {conn_id!r} failed ({type(error).__name__}: {error}); "
            "nothing was done with a default in its place: retry when the lookup works again"
        )
        self.conn_id = conn_id


class ConnectionMissing(RuntimeError):
    """A connection this deployment needs is not configured (and the run is not embedded)."""

    def __init__(self, conn_id: str, what: str):
        super().__init__(
            f"no {conn_id!r} connection ({what}): configure it (Airflow UI, a secrets backend, or "
            f"AIRFLOW_CONN_{conn_id.upper()}); embedded defaults apply only when REFRESHER_EMBEDDED=true"
        )
        self.conn_id = conn_id


_ENVIRONMENT_ONLY = False


def use_environment_only() -> None:
    """Read connections from ``AIRFLOW_CONN_*`` variables only (the CLI: no Airflow import)."""
    global _ENVIRONMENT_ONLY
    _ENVIRONMENT_ONLY = True


def resolve_all(conn_ids: tuple[str, ...] = ALL_CONNECTION_IDS) -> dict[str, ConnectionInfo | None]:
    return {conn_id: get_connection(conn_id) for conn_id in conn_ids}


def get_connection(conn_id: str, *, use_airflow: bool = True) -> ConnectionInfo | None:
    """The connection ``conn_id``, or ``None`` when it is not configured anywhere.

    :raises ConnectionLookupFailed: the lookup failed for another reason than "not found".
    """
    if conn_id in _PRELOADED:
        return _PRELOADED[conn_id]
    if use_airflow and not _ENVIRONMENT_ONLY:
        try:
            return _from_airflow(conn_id)
        except ImportError:  # pragma: no cover - Airflow is a dependency
            pass
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    return parse_connection(conn_id, value) if value else None


def _from_airflow(conn_id: str) -> ConnectionInfo | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    except Exception as exc:
        raise ConnectionLookupFailed(conn_id, exc) from exc
    return ConnectionInfo.of(conn_id, conn)
