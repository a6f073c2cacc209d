"""`make up` / `make down` / `make trigger`: Airflow on this machine, with `make run`'s embedded defaults.

    make up [EXECUTOR=local|celery]   API server + UI, scheduler, DAG processor, triggerer
                                       (+ Redis and two Celery workers with EXECUTOR=celery)
    make trigger [DAG=iati_refresh]   trigger a run through the REST API, wait, print its outcome
    make down                         stop exactly what `make up` started (PID files), and the
                                       project's PostgreSQL cluster

Everything listens on 127.0.0.1 only, on these ports (environment variables):

    AIRFLOW_PORT                8080   Airflow UI and REST API
    SAMPLE_REGISTRY_PORT        8765   the sample registry (Bulk Data Service API)
    REFRESHER_LOCAL_PG_PORT    55432   the project's PostgreSQL (refresher and Airflow databases)
    REFRESHER_LOCAL_REDIS_PORT 56379   Redis, the Celery broker (EXECUTOR=celery only)

No log server is started: the UI reads task logs from .airflow/logs on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
RUN_DIR = PROJECT / ".run"
HOME = PROJECT / ".airflow"
STATE = HOME / "stack.json"  # how `make up` was started: `make down` and `make trigger` read it


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _stack(executor: str, env: dict[str, str], ports: dict[str, int], broker: str = ""):
    from iati_refresher.local.stack import AirflowStack

    return AirflowStack(
        home=HOME,
        metadata_uri=f"postgresql+psycopg://postgres@127.0.0.1:{ports['REFRESHER_LOCAL_PG_PORT']}/iati_airflow",
        executor="CeleryExecutor" if executor == "celery" else "LocalExecutor",
        api_port=ports["AIRFLOW_PORT"],
        broker_url=broker,
        workers=2,
        worker_concurrency=2,
        environment=env,
    )


def up(executor: str) -> int:
    from iati_refresher.local.embedded import describe, embedded_settings
    from iati_refresher.local.servers import LocalPostgres, LocalRedis, ServerUnavailable

    ports = {
        "AIRFLOW_PORT": _port("AIRFLOW_PORT", 8080),
        "SAMPLE_REGISTRY_PORT": _port("SAMPLE_REGISTRY_PORT", 8765),
        "REFRESHER_LOCAL_PG_PORT": _port("REFRESHER_LOCAL_PG_PORT", 55432),
    }
    if executor == "celery":
        ports["REFRESHER_LOCAL_REDIS_PORT"] = _port("REFRESHER_LOCAL_REDIS_PORT", 56379)
    if STATE.exists():
        print("make up: already started (make down first)", file=sys.stderr)
        return 1
    try:
        pg = LocalPostgres(RUN_DIR / "pg", ports["REFRESHER_LOCAL_PG_PORT"]).start()
        refresher_db = pg.create_database("iati_refresher")
        pg.create_database("iati_airflow")
        broker = ""
        if executor == "celery":
            broker = LocalRedis(RUN_DIR / "redis", ports["REFRESHER_LOCAL_REDIS_PORT"]).start().url
    except ServerUnavailable as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1

    env = {key: value for key, value in os.environ.items() if key.startswith(("AIRFLOW_CONN_", "REFRESHER_"))}
    for key, value in embedded_settings(RUN_DIR).items():
        env.setdefault(key, value)
    env.setdefault("AIRFLOW_CONN_REFRESHER_DB", refresher_db)
    if executor == "celery":
        env.setdefault("REFRESHER_LOCAL_BLOB_DIR_SHARED", "true")  # both workers run on this machine
        env.setdefault("REFRESHER_AIRFLOW_WORKERS", "2")
    stack = _stack(executor, env, ports, broker)
    HOME.mkdir(exist_ok=True)
    stack.pid_dir.mkdir(parents=True, exist_ok=True)
    sample_registry = None
    if "AIRFLOW_CONN_IATI_REGISTRY" not in env:
        log = open(stack.pid_dir.parent / "sample-registry.log", "ab")  # noqa: SIM115 - kept by the child
        registry = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iati_refresher.sample.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["SAMPLE_REGISTRY_PORT"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (stack.pid_dir / "sample-registry.pid").write_text(str(registry.pid))
        sample_registry = env["AIRFLOW_CONN_IATI_REGISTRY"] = f"http://127.0.0.1:{ports['SAMPLE_REGISTRY_PORT']}"
    else:
        del ports["SAMPLE_REGISTRY_PORT"]
    # No environment here: it may hold secrets (connections).
    STATE.write_text(json.dumps({"executor": executor, "ports": ports, "broker": broker}))
    started = time.monotonic()
    try:
        stack.start()
    except Exception as exc:
        print(f"make up: {exc}", file=sys.stderr)
        down()
        return 1
    print(
        f"Airflow is up in {time.monotonic() - started:.0f} s: http://127.0.0.1:{ports['AIRFLOW_PORT']}  "
        "(user admin, password admin)"
    )
    print(f"executor       {stack.executor}" + (" with 2 Celery workers (prefork, concurrency 2)" if broker else ""))
    print("ports          " + ", ".join(f"{port} ({name})" for name, port in ports.items()) + ", all on 127.0.0.1")
    for line in describe(env, sample_registry=sample_registry):
        print(line)
    print(f"logs           {stack.log_dir} (components), {HOME / 'logs'} (tasks)")
    print("The DAGs start paused. Run the pipeline once: make trigger   (or unpause iati_refresh in the UI)")
    print("Stop everything: make down")
    return 0


def down() -> int:
    from iati_refresher.local.servers import LocalPostgres, LocalRedis

    state = json.loads(STATE.read_text()) if STATE.exists() else {"executor": "local", "ports": {}}
    ports = {"AIRFLOW_PORT": 8080, "REFRESHER_LOCAL_PG_PORT": _port("REFRESHER_LOCAL_PG_PORT", 55432), **state["ports"]}
    stack = _stack(state["executor"], {}, ports)
    stopped = sorted(stack.process_groups())
    stack.stop()
    if (RUN_DIR / "redis" / "redis.pid").exists():
        LocalRedis(RUN_DIR / "redis", ports.get("REFRESHER_LOCAL_REDIS_PORT", 56379)).stop()
        stopped.append("redis")
    pg = LocalPostgres(RUN_DIR / "pg", ports["REFRESHER_LOCAL_PG_PORT"])
    if pg.initialised() and pg.running():
        pg.stop()
        stopped.append("postgresql (.run/pg)")
    STATE.unlink(missing_ok=True)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def trigger(dag_id: str, timeout_s: float) -> int:
    if not STATE.exists():
        print("make trigger: nothing is up (make up first)", file=sys.stderr)
        return 1
    state = json.loads(STATE.read_text())
    stack = _stack(state["executor"], {}, {"AIRFLOW_PORT": 8080, **state["ports"]})
    started = time.monotonic()
    run_id = _follow_or_trigger(stack, dag_id)
    result = stack.wait_for_run(dag_id, run_id, timeout_s)
    wall = time.monotonic() - started
    tis = stack.task_instances(dag_id, run_id)
    by_state: dict[str, int] = {}
    for ti in tis:
        by_state[ti["state"] or "none"] = by_state.get(ti["state"] or "none", 0) + 1
    print(f"{dag_id} run {run_id}: {result} in {wall:.0f} s; task instances {by_state}")
    with contextlib.suppress(Exception):
        from urllib.parse import quote

        summary = stack.api(
            "GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/summary/xcomEntries/return_value"
        )
        from iati_refresher.pipeline import format_summary

        print(format_summary(summary["value"] if isinstance(summary["value"], dict) else json.loads(summary["value"])))
    return 0 if result == "success" else 1


def _follow_or_trigger(stack, dag_id: str) -> str:
    """Unpausing a scheduled DAG makes the scheduler start its latest interval's run: follow
    that one; trigger a run only when none comes."""
    stack.wait_for_dag(dag_id)
    was_paused = stack.api("GET", f"/dags/{dag_id}")["is_paused"]
    if was_paused:
        stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            active = stack.api("GET", f"/dags/{dag_id}/dagRuns?state=queued&state=running&order_by=-run_after")
            if active["dag_runs"]:
                run_id = str(active["dag_runs"][0]["dag_run_id"])
                print(f"unpaused {dag_id}; following its scheduled run {run_id} ...", flush=True)
                return run_id
            time.sleep(1)
    run_id = stack.trigger(dag_id)
    print(f"triggered {dag_id} run {run_id}; waiting ...", flush=True)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up")
    start.add_argument("--executor", choices=("local", "celery"), default="local")
    sub.add_parser("down")
    run = sub.add_parser("trigger")
    run.add_argument("dag_id", nargs="?", default="iati_refresh")
    run.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.command == "up":
        return up(args.executor)
    if args.command == "down":
        return down()
    return trigger(args.dag_id, args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
