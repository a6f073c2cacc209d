"""PostgreSQL and Redis servers on loopback for embedded runs (`make run`, `make up`) and tests.

Machines that run this project's commands need not run a database or broker: each server
here is started from the machine's own binaries into a directory of ours, on a port of
ours, bound to 127.0.0.1, and stopped by its data directory or PID, never by name.

Where the binaries come from, in order: an explicit setting (``REFRESHER_PG_BINDIR``,
``REFRESHER_REDIS_SERVER``), the usual install locations, Debian's packages when running
as root (``apt-get install postgresql`` / ``redis-tools``, which starts no system service),
and for PostgreSQL the embedded build of the ``pgserver`` wheel.  When none works,
:class:`ServerUnavailable` says what to install.

PostgreSQL refuses to run as root; as root the cluster belongs to the ``postgres`` user
(or ``nobody``).  Authentication is ``trust`` on 127.0.0.1 only: these are development
servers, never a deployment's.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PGSERVER_VERSION = "0.1.4"
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


class ServerUnavailable(RuntimeError):
    """A server could not be found or started; the message says what to install or set."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(*packages: str) -> bool:
    """Install Debian packages when we may (root, apt-get present); True when it worked."""
    if not _is_root() or shutil.which("apt-get") is None:
        return False
    print(f"installing {' '.join(packages)} from Debian's packages ...", file=sys.stderr, flush=True)
    env = {**os.environ, **_APT_ENV}
    for command in (["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],):
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            # The package lists of a fresh machine may be missing: update once, try again.
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"apt-get failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return False
    return True


# --- PostgreSQL ------------------------------------------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    digits = [part for part in Path(path).parts if part.replace(".", "").isdigit()]
    return tuple(int(x) for x in digits[-1].split(".")) if digits else (0,)


def _pg_candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("REFRESHER_PG_BINDIR"):
        found.append(Path(os.environ["REFRESHER_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found.append(
                Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
            )
    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql@*/bin",
        "/usr/local/opt/postgresql@*/bin",
    ):
        found.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True))
    found.append(Path("/usr/local/pgsql/bin"))
    initdb = shutil.which("initdb")
    if initdb:
        found.append(Path(initdb).parent)
    return found


def _pgserver_bindir() -> Path | None:
    """The PostgreSQL build inside the ``pgserver`` wheel (installed into this venv on demand)."""
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError:
        if (
            shutil.which("uv") is None
            and subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True).returncode != 0
        ):
            return None
        print(f"installing pgserver=={PGSERVER_VERSION} (an embedded PostgreSQL) ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "uv", "pip", "install", "-q", "-p", sys.executable, f"pgserver=={PGSERVER_VERSION}"],
            capture_output=True,
        )
        if done.returncode != 0:
            return None
        import pgserver  # type: ignore[import-not-found]
    bindir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return bindir if (bindir / "initdb").exists() else None


def postgres_bindir(*, install: bool = True) -> Path:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""

    def first() -> Path | None:
        return next((d for d in _pg_candidates() if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)

    found = first()
    if found is None and install and _apt_install("postgresql"):
        found = first()
    if found is None and install:
        found = _pgserver_bindir()
    if found is None:
        raise ServerUnavailable(
            "PostgreSQL's server programs (initdb, pg_ctl) were not found. Install PostgreSQL "
            "(Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16), or set "
            "REFRESHER_PG_BINDIR to its bin directory, or point the project at a running server "
            "(AIRFLOW_CONN_REFRESHER_DB for runs, REFRESHER_TEST_PG for tests)."
        )
    return found


class LocalPostgres:
    """A PostgreSQL cluster of ours in ``data_dir``, on 127.0.0.1:``port``, trust auth.

    ``durable=False`` (tests) turns off fsync: a crash may lose the cluster, which a test
    run throws away anyway, and CREATE DATABASE from a template gets several times faster.
    """

    def __init__(self, data_dir: Path | str, port: int, *, durable: bool = True, max_connections: int = 300):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.durable = durable
        self.max_connections = max_connections
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._bindir: Path | None = None

    # --- addresses -----------------------------------------------------------------------------

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def uri(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = postgres_bindir()
        return self._bindir

    def _owner(self) -> str | None:
        """The user the server runs as when we are root (PostgreSQL refuses root)."""
        if not _is_root():
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        raise ServerUnavailable("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        owner = self._owner()
        command = [str(self.bindir / args[0]), *args[1:]]
        if owner:
            runuser = shutil.which("runuser")
            command = (
                [runuser, "-u", owner, "--", *command]
                if runuser
                else ["su", "-s", "/bin/sh", owner, "-c", " ".join(f"'{a}'" for a in command)]
            )
        # cwd: the owner may not be able to enter ours.
        done = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
        if check and done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-800:]
            raise ServerUnavailable(f"{args[0]} failed ({done.returncode}): {output}")
        return done

    def _prepare_dirs(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        owner = self._owner()
        if owner:
            entry = pwd.getpwnam(owner)
            # The server user must reach the data directory through its parents.
            for parent in [self.data_dir.parent, *self.data_dir.parent.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
            self.data_dir.mkdir(exist_ok=True)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self.log_file.touch()
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self) -> LocalPostgres:
        """Create the cluster if needed and start it (a running one is reused)."""
        self._prepare_dirs()
        if not self.initialised():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                *([] if self.durable else ["--no-sync"]),
            )
        if self.running():
            return self
        if port_open(self.port):
            raise ServerUnavailable(f"port {self.port} is in use by another program; choose another port")
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            f"-c max_connections={self.max_connections}",
            "-c synchronous_commit=off",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
        )
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"PostgreSQL did not listen on 127.0.0.1:{self.port}; see {self.log_file}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.initialised() and (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", check=False)

    def _client_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def drop_database(self, name: str) -> None:
        self._run("dropdb", *self._client_args(), "--if-exists", "--force", name)

    def create_database(self, name: str, *, fresh: bool = False) -> str:
        """Create ``name`` (dropped first when ``fresh``); returns its URI."""
        if fresh:
            self.drop_database(name)
        done = self._run("createdb", *self._client_args(), name, check=False)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise ServerUnavailable(f"createdb {name} failed: {done.stderr.strip()[-500:]}")
        return self.uri(name)


# --- Redis --------------------------------------------------------------------------------------------


def redis_server_binary(link_dir: Path, *, install: bool = True) -> Path:
    """The ``redis-server`` program.

    Debian's ``redis-tools`` ships the server as ``redis-check-rdb``, which acts as the
    server when called ``redis-server``; a link of ours with that name avoids installing
    the ``redis-server`` package, whose install starts a system-wide service.
    """

    def first() -> Path | None:
        explicit = os.environ.get("REFRESHER_REDIS_SERVER")
        if explicit:
            return Path(explicit)
        on_path = shutil.which("redis-server")
        if on_path:
            return Path(on_path)
        for candidate in ("/usr/bin/redis-check-rdb", "/usr/local/bin/redis-check-rdb"):
            if os.access(candidate, os.X_OK):
                link_dir.mkdir(parents=True, exist_ok=True)
                link = link_dir / "redis-server"
                if not link.exists():
                    link.symlink_to(candidate)
                return link
        return None

    found = first()
    if found is None and install and _apt_install("redis-tools"):
        found = first()
    if found is None:
        raise ServerUnavailable(
            "Redis (redis-server) was not found. Install it (Debian/Ubuntu: apt-get install redis-tools "
            "or redis-server; macOS: brew install redis), or set REFRESHER_REDIS_SERVER to the program."
        )
    return found


class LocalRedis:
    """A Redis server of ours on 127.0.0.1:``port`` (no persistence: a broker for one run)."""

    def __init__(self, work_dir: Path | str, port: int):
        self.work_dir = Path(work_dir).resolve()
        self.port = port
        self.pid_file = self.work_dir / "redis.pid"
        self.log_file = self.work_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
        return False

    def start(self) -> LocalRedis:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.ping():
            return self
        if port_open(self.port):
            raise ServerUnavailable(f"port {self.port} is in use by another program; choose another port")
        binary = redis_server_binary(self.work_dir / "bin")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--protected-mode",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.work_dir),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + 30
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServerUnavailable(f"Redis did not start on 127.0.0.1:{self.port}; see {self.log_file}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        pid = self.proc.pid if self.proc else (int(self.pid_file.read_text()) if self.pid_file.exists() else None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.pid_file.unlink(missing_ok=True)


# --- command line (make up / make run / make down) ------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m iati_refresher.local.servers", description=__doc__.split("\n")[0])
    parser.add_argument("server", choices=["postgres", "redis"])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", required=True, help="data (PostgreSQL) or work (Redis) directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", action="append", default=[], help="PostgreSQL: make sure it exists")
    args = parser.parse_args(argv)
    try:
        if args.server == "postgres":
            pg = LocalPostgres(args.dir, args.port)
            if args.action == "start":
                pg.start()
                for name in args.database:
                    pg.create_database(name)
                print(pg.uri("postgres"))
            elif args.action == "stop":
                pg.stop()
            else:
                return 0 if pg.running() else 3
        else:
            redis = LocalRedis(args.dir, args.port)
            if args.action == "start":
                print(redis.start().url)
            elif args.action == "stop":
                redis.stop()
            else:
                return 0 if redis.ping() else 3
    except ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
