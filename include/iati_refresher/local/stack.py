"""A real Airflow deployment on one machine: API server, scheduler, DAG processor, triggerer
and, for the CeleryExecutor, Celery workers — each a process group of its own, started
from this project's venv and stopped by its PID, never by name.

Used by `make up` (LocalExecutor, or Celery), by the Celery test tier and by
``bench/e2e.py --executor celery``.  Every port it opens is bound to 127.0.0.1 and is a
parameter: the API server's (``api_port``); log servers are not started (``--skip-serve-logs``:
the API server reads task logs from the shared log folder of this one machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[3]
WORKER_NAME_VARIABLE = "IATI_REFRESHER_WORKER_NAME"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local stack: Celery workers on one machine get
    names of their own, so task instances show which worker ran them."""
    return os.environ.get(WORKER_NAME_VARIABLE) or socket.getfqdn()


class StackError(RuntimeError):
    """A component did not start, or a run could not be followed."""


@dataclass
class AirflowStack:
    """One local Airflow deployment.

    ``environment`` holds what every component (and so every task) sees: the refresher's
    connections and settings.  ``metadata_uri`` is Airflow's metadata database (PostgreSQL;
    the Celery executor's result backend is the same database).
    """

    home: Path
    metadata_uri: str
    executor: str = "LocalExecutor"
    api_port: int = 8080
    broker_url: str = ""
    workers: int = 2
    worker_concurrency: int = 2
    worker_pool: str = "prefork"
    parallelism: int = 8
    admin_password: str = "admin"
    environment: Mapping[str, str] = field(default_factory=dict)
    triggerer: bool = True
    heartbeat_timeout_s: int | None = None  # [scheduler] task_instance_heartbeat_timeout (tests make it short)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # --- configuration ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid_dir(self) -> Path:
        return self.home / "pids"

    @property
    def log_dir(self) -> Path:
        return self.home / "component-logs"

    def env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            {
                "PATH": f"{bindir}:{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the connection forms' Test button
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_uri,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        if self.heartbeat_timeout_s is not None:
            env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(self.heartbeat_timeout_s)
            env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"] = "5"
        if self.executor == "CeleryExecutor":
            if not self.broker_url:
                raise StackError("the CeleryExecutor needs a broker_url (Redis)")
            result_backend = "db+" + self.metadata_uri.replace("+psycopg2", "").replace("+psycopg", "")
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
                    "AIRFLOW__CELERY__POOL": self.worker_pool,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
        env.update(self.environment)
        return env

    # --- life cycle --------------------------------------------------------------------------------

    def _airflow(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=PROJECT_DIR,
        )
        if done.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} failed: {(done.stderr or done.stdout)[-2000:]}")
        return done.stdout

    def prepare(self) -> None:
        """Migrate the metadata database, create the pools, write the admin password."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({"admin": self.admin_password}))
        passwords.chmod(0o600)
        self._airflow("db", "migrate")
        subprocess.run(
            [sys.executable, "-m", "iati_refresher.airflow_setup"],
            env=self.env(),
            check=True,
            capture_output=True,
            cwd=PROJECT_DIR,
        )

    def _spawn(self, name: str, *args: str, extra_env: Mapping[str, str] | None = None) -> None:
        env = {**self.env(), **(extra_env or {})}
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open by the child
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=env,
            cwd=PROJECT_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = proc
        (self.pid_dir / f"{name}.pid").write_text(str(proc.pid))

    def start(self, *, prepare: bool = True, wait_s: float = 180) -> AirflowStack:
        if prepare:
            self.prepare()
        self._spawn("api-server", "api-server")
        self._spawn("scheduler", "scheduler", "--skip-serve-logs")
        self._spawn("dag-processor", "dag-processor")
        if self.triggerer:
            self._spawn("triggerer", "triggerer", "--skip-serve-logs")
        if self.executor == "CeleryExecutor":
            for i in range(1, self.workers + 1):
                self.start_worker(i)
        self.wait_healthy(wait_s)
        return self

    def start_worker(self, number: int) -> None:
        name = f"worker{number}"
        self._spawn(
            f"celery-{name}",
            "celery",
            "worker",
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
            "-H",
            f"{name}@%h",
            "-c",
            str(self.worker_concurrency),
            extra_env={WORKER_NAME_VARIABLE: name},
        )

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=5) as response:
                    health = json.load(response)
                if (
                    health.get("scheduler", {}).get("status") == "healthy"
                    and (health.get("dag_processor") or {}).get("status") == "healthy"
                ):
                    return
            time.sleep(1)
        raise StackError(f"Airflow did not become healthy within {timeout_s:.0f} s; see {self.log_dir}")

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left of them."""
        groups = self.process_groups()
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups.values()):
            time.sleep(0.25)
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)  # LocalExecutor workers ignore SIGTERM while the scheduler waits
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in groups:
            (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        self.processes.clear()

    def process_groups(self) -> dict[str, int]:
        """Component name -> process group id: of the processes we hold, else from PID files."""
        groups = {name: proc.pid for name, proc in self.processes.items()}
        if self.pid_dir.exists():
            for pid_file in self.pid_dir.glob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    groups.setdefault(pid_file.stem, int(pid_file.read_text()))
        return groups

    def kill_worker(self, number: int) -> list[int]:
        """SIGKILL a Celery worker and everything it started (a machine lost); returns the pids."""
        name = f"celery-worker{number}"
        pgid = self.process_groups()[name]
        pids = _group_members(pgid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc = self.processes.pop(name, None)
        if proc is not None:
            proc.wait(10)
        (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        return pids

    # --- the REST API ----------------------------------------------------------------------------------

    def _token(self) -> str:
        body = json.dumps({"username": "admin", "password": self.admin_password}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/auth/token", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.load(response)["access_token"])

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = response.read()
                # DELETE answers 204 with no body
                return json.loads(payload) if payload else None
        except urllib.error.HTTPError as exc:
            raise StackError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(StackError):
                self.api("GET", f"/dags/{dag_id}")
                return
            time.sleep(1)
        raise StackError(f"the DAG processor did not load {dag_id} within {timeout_s:.0f} s")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        self.wait_for_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise StackError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=1000"
        return list(self.api("GET", path)["task_instances"])

    def running(self) -> Iterator[str]:
        for name, proc in self.processes.items():
            if proc.poll() is None:
                yield name


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == pgid:
                    members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of a group we own count as gone.
    return any(_state(pid) not in ("Z", "X") for pid in _group_members(pgid))


def _state(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"
