"""The first task of every run: can this deployment run the pipeline as configured?"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from iati_refresher import connections
from iati_refresher.iati import accelerated
from iati_refresher.settings import Settings, get_settings
from iati_refresher.storage import BlobStoreConfig, blob_config_for

log = logging.getLogger(__name__)


#: Executors whose tasks all run on the machine of the scheduler (or in the test process).
LOCAL_EXECUTORS = {"LocalExecutor", "SequentialExecutor", "DebugExecutor", ""}


class PreflightFailed(RuntimeError):
    """The deployment cannot run the pipeline as configured; the message says what to change."""


def airflow_executor() -> str:
    """The configured executor(s) of this Airflow deployment (``[core] executor``)."""
    try:
        from airflow.configuration import conf

        return str(conf.get("core", "executor", fallback="") or "")
    except Exception:  # outside Airflow (CLI)
        return ""


def preflight(settings: Settings | None = None, *, executor: str | None = None) -> dict[str, Any]:
    """Check the deployment before the run does anything; log the backend of every stage.

    Refuses a local blob directory under a distributed executor (Celery, Kubernetes):
    each worker would write files the others cannot read, and documents would fail one
    stage later on another machine — unless ``REFRESHER_LOCAL_BLOB_DIR_SHARED`` says the
    directory is a mount all workers share.
    """
    from iati_refresher.clients import validator_for
    from iati_refresher.solr_client import open_solr

    settings = settings or get_settings()
    executor = airflow_executor() if executor is None else executor
    names = [e.split(":")[-1].rsplit(".", 1)[-1].strip() for e in executor.split(",")]
    distributed = [n for n in names if n not in LOCAL_EXECUTORS]
    missing: list[str] = []

    def backend(describe: Callable[[], str]) -> str:
        try:
            return describe()
        except connections.ConnectionMissing as exc:
            missing.append(str(exc))
            return f"MISSING ({exc.conn_id})"

    def index() -> str:
        with open_solr(settings) as solr:
            return f"Solr at {solr.base_url}" if solr is not None else "not configured (embedded run): indexing skipped"

    def validator() -> str:
        client = validator_for(settings)
        close = getattr(client, "close", None)
        if close is not None:
            close()
        base_url = getattr(client, "base_url", None)
        return f"IATI Validator API at {base_url}" if base_url else "built-in schema validator"

    blob: list[BlobStoreConfig] = []

    def storage() -> str:
        blob.append(blob_config_for(settings))
        return blob[0].describe()

    backends = {
        "kind": "embedded run (local defaults allowed)" if settings.embedded else "deployment",
        "executor": executor or "(default)",
        "storage": backend(storage),
        "registry": f"{settings.registry_source} at {_registry_url(settings)}",
        "validator": backend(validator),
        "index": backend(index),
        "alerts": "Slack (slack_oncall)"
        if connections.get_connection(connections.SLACK)
        else "NOT CONFIGURED: failures are only logged (set the slack_oncall connection)",
        "notices": "Communications Hub (iati_commshub)"
        if connections.get_connection(connections.COMMSHUB)
        else "no Communications Hub: publisher flags are announced in Slack only",
        "compiled": accelerated.PROBLEM or "compiled hot paths of flatten, lakify and index in use",
    }
    for what, where in backends.items():
        log.info("preflight: %-9s %s", what, where)
    if accelerated.PROBLEM:  # the same results, but about twice the CPU for three stages
        log.warning("preflight: %s", accelerated.PROBLEM)
    if missing:
        raise PreflightFailed("this deployment lacks what the pipeline needs: " + "; ".join(missing))
    if distributed and blob[0].backend == "local" and not settings.local_blob_dir_shared:
        raise PreflightFailed(
            f"the {', '.join(distributed)} runs tasks on several machines, but blob storage is the local directory "
            f"{blob[0].local_dir} of each one: configure the '{connections.BLOB_STORAGE}' connection (Azure Blob "
            "Storage), or set REFRESHER_LOCAL_BLOB_DIR_SHARED=true if that directory is a mount every worker shares"
        )
    return backends


def _registry_url(settings: Settings) -> str:
    conn = connections.get_connection(connections.REGISTRY)
    if conn is not None:
        return conn.base_url(default_scheme="https")
    return settings.bds_url if settings.registry_source == "bds" else settings.ckan_url
