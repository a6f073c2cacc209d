"""The docker-compose stack, checked with ``docker-compose config`` (no Docker engine runs here).

The configuration is rendered with ``docker/.env.example`` as the environment file, so the
example a newcomer copies is checked too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from iati_refresher.connections import parse_connection

PROJECT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = PROJECT / "docker" / ".env.example"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)
OTHER_SERVICES = ("postgres", "refresher-db", "redis", "azurite", "solr", "solr-init")
LONG_RUNNING = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(
            "docker-compose is not installed and apt-get is unavailable (or not root) to install it: "
            "install Debian's docker-compose package to run this test"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "-qq", "update"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(
        [apt, "-qq", "install", "-y", "docker-compose"], check=True, env=env, capture_output=True, timeout=600
    )
    found = shutil.which("docker-compose")
    assert found, "apt-get installed docker-compose but it is not on PATH"
    return found


def _clean_env() -> dict[str, str]:
    """The process environment without anything the compose file interpolates."""
    keys = set(re.findall(r"\$\{([A-Z0-9_]+)", (PROJECT / "docker-compose.yaml").read_text()))
    return {k: v for k, v in os.environ.items() if k not in keys and not k.startswith(("AIRFLOW", "REFRESHER"))}


def render(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _docker_compose(),
            "--project-directory",
            str(PROJECT),
            "-f",
            str(PROJECT / "docker-compose.yaml"),
            "--env-file",
            str(env_file),
            "config",
        ],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=PROJECT,
        timeout=120,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = render(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _volumes(service: dict) -> list[dict]:
    """Volumes in the long form (docker-compose 1.x renders the short ``src:dst[:mode]`` form)."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            volume = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
        result.append(volume)
    return result


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_every_service_is_there(config):
    assert set(AIRFLOW_SERVICES + OTHER_SERVICES) <= set(config["services"])


def test_airflow_services_share_connections_and_configuration(config):
    services = config["services"]

    def shared(name: str) -> dict[str, str]:
        return {k: v for k, v in _env(services[name]).items() if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}

    reference = shared("airflow-scheduler")
    for name in AIRFLOW_SERVICES:
        assert shared(name) == reference, name
    conns = {k.removeprefix("AIRFLOW_CONN_") for k in reference if k.startswith("AIRFLOW_CONN_")}
    assert {"REFRESHER_DB", "REFRESHER_BLOB", "IATI_REGISTRY", "SOLR", "IATI_VALIDATOR", "SLACK_ONCALL"} <= conns
    assert reference["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Same secrets everywhere, or tasks cannot authenticate to the API server.
    assert reference["AIRFLOW__API_AUTH__JWT_SECRET"]
    # Same image for all of them.
    assert len({services[name]["image"] for name in AIRFLOW_SERVICES}) == 1


def test_connections_point_at_the_stack(config):
    services = config["services"]
    env = _env(services["airflow-worker"])
    db = parse_connection("refresher_db", env["AIRFLOW_CONN_REFRESHER_DB"])
    assert (db.conn_type, db.host, db.port, db.schema) == ("postgres", "refresher-db", 5432, "refresher")
    refresher_db = _env(services["refresher-db"])
    assert (db.login, db.password) == (refresher_db["POSTGRES_USER"], refresher_db["POSTGRES_PASSWORD"])

    blob = parse_connection("refresher_blob", env["AIRFLOW_CONN_REFRESHER_BLOB"])
    assert blob.conn_type == "wasb"
    assert "BlobEndpoint=http://azurite:10000/" in blob.extra["connection_string"]
    assert "QueueEndpoint=http://azurite:10001/" in blob.extra["connection_string"]

    solr = parse_connection("solr", env["AIRFLOW_CONN_SOLR"])
    assert solr.base_url() == "http://solr:8983/solr"
    registry = parse_connection("iati_registry", env["AIRFLOW_CONN_IATI_REGISTRY"])
    assert registry.base_url() == "https://bulk-data.iatistandard.org"
    # Optional connections are empty by default: the built-in validator, alerts in the log only.
    assert env["AIRFLOW_CONN_IATI_VALIDATOR"] == ""
    assert env["AIRFLOW_CONN_SLACK_ONCALL"] == ""

    metadata = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert re.match(r"postgresql\+psycopg://airflow:[^@]+@postgres/airflow$", metadata)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:6379/")


def test_the_validator_url_is_configurable(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        ENV_EXAMPLE.read_text().replace(
            "IATI_VALIDATOR_URL=\n", "IATI_VALIDATOR_URL=https://:k3y@validator.example.org/api\n"
        )
    )
    result = render(env_file)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in AIRFLOW_SERVICES:
        conn = parse_connection("iati_validator", _env(services[name])["AIRFLOW_CONN_IATI_VALIDATOR"])
        assert (conn.base_url(), conn.password) == ("https://validator.example.org/api", "k3y")


def test_secrets_are_required(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("AIRFLOW_JWT_SECRET="))
        + "\n"
    )
    result = render(env_file)
    assert result.returncode != 0
    assert "AIRFLOW_JWT_SECRET" in result.stderr


def test_solr_runs_solrcloud_with_the_project_configsets(config):
    services = config["services"]
    solr, init = services["solr"], services["solr-init"]
    assert "-c" in _command(solr)
    assert "scripting" in _env(solr)["SOLR_MODULES"].split(",")
    mounts = {Path(v["source"]).resolve(): v for v in _volumes(solr) if v["type"] == "bind"}
    assert (PROJECT / "solr").resolve() in mounts
    target = mounts[(PROJECT / "solr").resolve()]["target"]
    for collection in ("activity", "transaction", "budget"):
        assert (PROJECT / "solr" / "configsets" / collection / "conf" / "solrconfig.xml").is_file()
    init_mounts = {v["target"]: Path(v["source"]).resolve() for v in _volumes(init) if v["type"] == "bind"}
    assert init_mounts[target] == (PROJECT / "solr").resolve()
    script = _command(init)[-1]
    assert script.startswith(target + "/")
    assert (PROJECT / "solr" / script.removeprefix(target + "/")).is_file(), "solr/create-collections.sh is missing"
    assert _env(init)["CONFIGSETS_DIR"] == f"{target}/configsets"
    assert init["network_mode"] == "service:solr"
    assert init["depends_on"]["solr"]["condition"] == "service_healthy"


def test_images_and_volumes(config):
    services = config["services"]
    for name, service in services.items():
        if name in AIRFLOW_SERVICES:
            assert service["build"]["context"] == str(PROJECT)
            continue
        image = service["image"]
        assert ":" in image, f"{name}: pin the image tag"
        assert not image.endswith(":latest"), name
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["refresher-db"]["image"].startswith("postgres:16")
    assert re.match(r"solr:9(\.|$)", services["solr"]["image"])

    declared = set(config.get("volumes") or {})
    for name, service in services.items():
        for volume in _volumes(service):
            if volume["type"] == "volume":
                assert volume["source"] in declared, f"{name}: undeclared volume {volume['source']}"
            else:
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} does not exist"
    for name, data_dir in (
        ("postgres", "/var/lib/postgresql/data"),
        ("refresher-db", "/var/lib/postgresql/data"),
        ("solr", "/var/solr"),
        ("azurite", "/data"),
    ):
        assert any(v["type"] == "volume" and v["target"] == data_dir for v in _volumes(services[name])), name
    for name in AIRFLOW_SERVICES:
        binds = {v["target"]: v for v in _volumes(services[name]) if v["type"] == "bind"}
        assert binds["/opt/airflow/dags"]["source"] == str(PROJECT / "dags")
        assert binds["/opt/airflow/plugins"]["source"] == str(PROJECT / "plugins")
        assert binds["/opt/airflow/dags"].get("read_only") is True


def test_airflow_services_are_healthy_and_ordered(config):
    services = config["services"]
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), name
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert _command(services["airflow-apiserver"]) == ["api-server"]
    assert _command(services["airflow-worker"]) == ["celery", "worker"]
    published = [
        p if isinstance(p, str) else f"{p.get('published')}:{p.get('target')}"
        for p in services["airflow-apiserver"]["ports"]
    ]
    assert [p.rsplit(":", 1)[-1].removesuffix("/tcp") for p in published] == ["8080"]
    for name in ("postgres", "refresher-db", "redis"):
        assert services["airflow-init"]["depends_on"][name]["condition"] == "service_healthy"


def test_init_service_runs_the_init_script():
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:3\.3\.2\b", dockerfile, re.M)
    assert "-c requirements.lock -r requirements.txt" in dockerfile
    assert "python -m iati_refresher.validation.fetch_schemas" in dockerfile
    assert "COPY --chown=airflow:0 docker/airflow-init.sh ./docker/airflow-init.sh" in dockerfile
    script = PROJECT / "docker" / "airflow-init.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    steps = ["airflow db migrate", "python -m iati_refresher.airflow_setup", "refresher db upgrade"]
    assert [text.index(s) for s in steps] == sorted(text.index(s) for s in steps)


def test_the_admin_password_file_is_valid_json(tmp_path):
    """Run the init script's password step alone (the other steps need the stack)."""
    script = (PROJECT / "docker" / "airflow-init.sh").read_text()
    block = script[script.index('python - "$passwords_file"') : script.index("PY\n", script.index("<<'PY'") + 6) + 3]
    target = tmp_path / "auth" / "passwords.json"
    env = {
        "PATH": os.environ["PATH"],
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": 'p"w\\d',
        "passwords_file": str(target),
    }
    subprocess.run(["bash", "-c", f'mkdir -p "$(dirname "$passwords_file")"\n{block}'], check=True, env=env)
    assert json.loads(target.read_text()) == {"admin": 'p"w\\d'}
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_celery_workers_use_a_pool_that_runs_the_stages_and_the_pools_add_up(config):
    """prefork is Celery's default and works (the stage workers are subprocesses); the CPU
    slots of the pool are the workers' concurrency times their number."""
    env = config["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__POOL"] == "prefork"
    assert env["REFRESHER_CPU_SLOTS_PER_WORKER"] == env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "2"
    assert env["REFRESHER_AIRFLOW_WORKERS"] == "1"
    assert env["AIRFLOW_CONN_REFRESHER_BLOB"], "a shared blob store: the preflight refuses a local directory"
    ports = config["services"]["airflow-apiserver"]["ports"]
    published = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}:{p['target']}" for p in ports]
    assert all(p.startswith("127.0.0.1:") for p in published), published
