"""Every tunable of the pipeline, in one place.

Each setting has a default and an environment override named ``REFRESHER_<NAME>``
(upper case).  Endpoints and secrets are *not* settings: they live in Airflow
connections (see :mod:`iati_refresher.connections`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from iati_refresher import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent.parent


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (containers,
    Kubernetes pods), where ``os.cpu_count()`` would report every CPU of the host."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota + 0.999)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        limit_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if limit_us <= 0 else limit_us / period_us
    except (OSError, ValueError):
        return None


def _default_pool_size() -> int:
    slots = int(os.environ.get("REFRESHER_CPU_SLOTS_PER_WORKER") or 1)
    return max(1, usable_cpus() // max(1, slots))


@dataclass(frozen=True)
class Settings:
    """Typed tunables.  ``Settings.from_env()`` applies ``REFRESHER_*`` overrides."""

    # --- the kind of run ------------------------------------------------------------------
    # An embedded run (`make run`, `make up`, the tests): a missing connection falls back to
    # the local default (blob directory, built-in validator, no Solr).  Anywhere else a
    # missing connection fails the run's preflight; nothing silently switches to a default.
    embedded: bool = False
    # "api": the IATI Validator API (the iati_validator connection); "builtin": the built-in
    # schema validator, chosen on purpose (no ruleset or codelist checks).
    validator_backend: str = "api"

    # --- registry sync -----------------------------------------------------------------
    registry_source: str = "bds"  # "bds" (IATI Bulk Data Service) or "ckan" (IATI Registry)
    bds_url: str = "https://bulk-data.iatistandard.org"  # used when no iati_registry connection
    bds_dataset_index_path: str = "/datasets-minimal"
    bds_reporting_org_index_path: str = "/reporting-orgs"
    ckan_url: str = "https://iatiregistry.org"
    ckan_page_size: int = 1000
    ckan_request_interval_s: float = 1.0
    publisher_safety_share: float = 0.5  # refuse a sync when fewer than this share of publishers remain
    document_safety_share: float = 0.5
    user_agent: str = f"iati-refresher-airflow/{__version__}"

    # --- download ------------------------------------------------------------------------
    http_timeout_s: float = 60.0
    download_timeout_s: float = 300.0
    max_download_bytes: int = 100 * 1024 * 1024
    charset_sample_bytes: int = 256 * 1024
    allow_private_addresses: bool = False  # tests and `make run` allow loopback explicitly
    allowed_private_networks: str = ""  # comma-separated CIDRs reachable even when private addresses are refused

    # --- per-document work ------------------------------------------------------------
    batch_size: int = 200  # documents per mapped task instance (at most)
    batch_max_bytes: int = 64 * 1024 * 1024  # ... and source bytes per instance: small files share one, big ones don't
    max_batches_per_stage: int = 400  # keeps each map far below Airflow's max_map_length
    # Parallelism (README: "Running on Celery and Kubernetes").  A CPU-bound batch (validate
    # with the built-in validator, clean, flatten, lakify, index) runs its documents in
    # ``process_pool_size`` worker processes; an Airflow worker runs ``cpu_slots_per_worker``
    # such batches at once; the ``refresher_cpu`` pool has airflow_workers x cpu_slots_per_worker slots.
    airflow_workers: int = 1  # machines (Celery workers, pods) that run tasks: sizes the pools
    cpu_slots_per_worker: int = 1
    process_pool_size: int = field(default_factory=_default_pool_size)  # default: usable CPUs / cpu_slots_per_worker
    document_timeout_s: float = 1800.0  # one document in a worker process; then the worker is stopped
    worker_max_rss_mb: int = 512  # a worker process that grew past this is replaced after its document
    claim_ttl_s: int = 3600  # a crashed worker's claim expires after this
    max_attempts: int = 5  # per stage; after this the document is parked as "gave up"
    retry_base_delay_s: int = 600
    retry_max_delay_s: int = 86400

    # --- validation and the publisher safety check ---------------------------------------
    validator_timeout_s: float = 3600.0
    # Files above this are never validated, by the API or the built-in validator (skipped
    # ``too_large``): the IATI Validator API's MAX_FILESIZE is 60 MiB, the download cap is larger.
    validator_max_bytes: int = 60 * 1024 * 1024
    safety_check_threshold: int = 100
    safety_check_period_s: int = 7200
    unflag_queue_name: str = ""  # Azure storage queue read for unflag requests ("" = off)

    # --- blob storage -----------------------------------------------------------------------
    local_blob_dir: str = str(Path.home() / ".iati-refresher" / "blobs")
    # With a distributed executor (Celery, Kubernetes) every worker must see the same files:
    # a local directory is refused unless it is declared a shared mount (NFS, Azure Files).
    local_blob_dir_shared: bool = False
    source_container: str = "source"
    clean_container: str = "clean"
    lake_container: str = "lake"
    flat_container: str = "flat"
    adhoc_container: str = "validator-adhoc"
    lake_upload_threads: int = 8  # lakify: parallel uploads to a remote store (a local directory is written inline)
    # Retries of one Azure blob request, about 2 s apart.  The SDK's own default waits about
    # 90 s per request while storage is down, so a batch would stall for an hour.
    blob_retry_total: int = 3
    blob_retry_backoff_s: int = 2

    # --- Solr ------------------------------------------------------------------------------
    solr_activity_collection: str = "activity"
    solr_transaction_collection: str = "transaction"
    solr_budget_collection: str = "budget"
    solr_alias_suffix: str = "_solrize"
    solr_batch_size: int = 500
    solr_timeout_s: float = 600.0
    solr_commit_within_ms: int = 15000
    solr_max_retries: int = 2  # quick in-request retries on connection errors and 502/503/504

    # --- scheduling and run health ------------------------------------------------------------
    refresh_schedule: str = "*/15 * * * *"  # cron of iati_refresh; "none" = only when triggered
    task_retry_delay_s: int = 60  # Airflow retries of a failed task wait this, doubling (at most 10 min)
    batch_timeout_s: int = 7200  # a batch task that runs longer is stopped (and retried)
    run_timeout_s: int = 6 * 3600  # an iati_refresh run that runs longer fails and pages (a hung run
    # would otherwise block every later run: max_active_runs is 1)
    run_failure_share: float = 0.25  # the summary fails the run when more failed than this share
    run_failure_min_count: int = 10  # ... and at least this many documents failed
    schemas_dir: str = str(PACKAGE_DIR / "validation" / "schemas")
    migrations_dir: str = str(PROJECT_DIR / "migrations")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"REFRESHER_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _coerce(f, raw)
        values.update(overrides)
        return cls(**values)

    @property
    def refresh_cron(self) -> str | None:
        """The schedule of iati_refresh (None: only when triggered)."""
        return None if self.refresh_schedule.strip().lower() in ("", "none") else self.refresh_schedule.strip()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, str, Any]]:
        """(setting, environment variable, current value) rows for docs and the CLI."""
        return [(f.name, f"REFRESHER_{f.name.upper()}", getattr(self, f.name)) for f in fields(self)]


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def get_settings() -> Settings:
    return Settings.from_env()
