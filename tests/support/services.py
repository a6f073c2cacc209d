"""Real services for the tests: throw-away PostgreSQL databases and an Azurite process.

PostgreSQL: ``REFRESHER_TEST_PG`` (a libpq conninfo of a server whose user may create
databases) when set; otherwise a cluster of the test session's own, started on first use
from the machine's PostgreSQL programs (:mod:`iati_refresher.local.servers`) on a free
loopback port and stopped when the session ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from iati_refresher.local.servers import LocalPostgres, LocalRedis, free_port

PROJECT = Path(__file__).resolve().parents[2]
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_lock = threading.Lock()
_servers: dict[str, Any] = {}
_session_dir: str | None = None


def _work_dir() -> str:
    global _session_dir
    if _session_dir is None:
        _session_dir = tempfile.mkdtemp(prefix="refresher-test-services-")
        atexit.register(shutil.rmtree, _session_dir, ignore_errors=True)
    return _session_dir


#: Set by `make test-fast`: the unit tier uses no server at all, and a test that asks for one
#: fails at once, saying so (instead of starting PostgreSQL, Redis or Azurite).
NO_SERVICES = "REFRESHER_TEST_NO_SERVICES"


def refuse_in_unit_tier(what: str) -> None:
    if os.environ.get(NO_SERVICES):
        raise RuntimeError(
            f"{what}: this test tier uses no services ({NO_SERVICES} is set); the test needs the "
            "`services` marker (or one of the service fixtures, which add it) to run in `make test` only"
        )


def _session_server(variable: str, start: Callable[[], Any], address: Callable[[Any], str]) -> str:
    """The address in ``variable`` when set; else a server of the session's, started once and
    stopped at exit.  The variable is then set, so processes the tests start (Airflow
    components, benchmarks) use the same server."""
    refuse_in_unit_tier(variable)
    explicit = os.environ.get(variable)
    if explicit:
        return explicit
    with _lock:
        if variable not in _servers:
            server = start()
            atexit.register(server.stop)  # registered after the work dir's rmtree: runs before it
            _servers[variable] = server
            os.environ[variable] = address(server)
        return address(_servers[variable])


def pg_admin() -> str:
    """The conninfo of a PostgreSQL superuser session on the tests' server (started on demand)."""
    return _session_server(
        "REFRESHER_TEST_PG",
        lambda: LocalPostgres(Path(_work_dir()) / "pg", free_port(), durable=False).start(),
        lambda server: server.conninfo(),
    )


def redis_url() -> str:
    """A Redis server for the test session (the Celery broker), started on demand."""
    return _session_server(
        "REFRESHER_TEST_REDIS",
        lambda: LocalRedis(Path(_work_dir()) / "redis", free_port()).start(),
        lambda server: server.url,
    )


def _admin() -> psycopg.Connection:
    return psycopg.connect(pg_admin(), autocommit=True)


def create_database(template: str | None = None) -> str:
    name = f"refresher_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def conninfo(dbname: str) -> str:
    base = psycopg.conninfo.conninfo_to_dict(pg_admin())
    base["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**base)


def airflow_uri(dbname: str, *, driver: str = "postgresql") -> str:
    """The same database as a URI (AIRFLOW_CONN_REFRESHER_DB; ``driver`` for SQLAlchemy URLs)."""
    base = psycopg.conninfo.conninfo_to_dict(pg_admin())
    user = base.get("user", "postgres")
    password = f":{base['password']}" if base.get("password") else ""
    return f"{driver}://{user}{password}@{base.get('host', '127.0.0.1')}:{base.get('port', 5432)}/{dbname}"


def azurite_binary() -> Path:
    path = PROJECT / "tools" / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise RuntimeError("Azurite is not installed: run `make deps` (npm install in tools/)")
    return path


class Azurite:
    """An Azurite blob (and queue) service on free loopback ports, data in a temp dir."""

    def __init__(self, *, in_memory: bool = False, https: tuple[Path, Path] | None = None) -> None:
        # https: (certificate, key): HTTPS with Azurite's basic OAuth mode, where Bearer tokens
        # are accepted when their issuer, audience and lifetime pass (``--oauth basic``).
        self.https = https
        self.blob_port = free_port()
        self.queue_port = free_port()
        self.location = tempfile.mkdtemp(prefix="azurite-")
        # In memory: faster for big benchmark stores, but every blob held in Azurite's process.
        self.in_memory = in_memory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    @property
    def account_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.account_url};"
            f"QueueEndpoint={self.scheme}://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT};"
        )

    def start(self) -> Azurite:
        refuse_in_unit_tier("Azurite")
        binary = azurite_binary().parent / "azurite"
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.blob_port),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(self.queue_port),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(free_port()),
                *(["--inMemoryPersistence"] if self.in_memory else ["--location", self.location]),
                *(
                    ["--oauth", "basic", "--cert", str(self.https[0]), "--key", str(self.https[1])]
                    if self.https
                    else []
                ),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.blob_port), 0.2):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError("Azurite did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.location, ignore_errors=True)

    def restart(self) -> None:
        """Stop the service and start it again on the same ports (data kept)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.start()


@contextlib.contextmanager
def running_azurite() -> Iterator[Azurite]:
    azurite = Azurite().start()
    try:
        yield azurite
    finally:
        azurite.stop()
