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


def _default_pool_size() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Typed tunables.  ``Settings.from_env()`` applies ``REFRESHER_*`` overrides."""

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
    process_pool_size: int = field(default_factory=_default_pool_size)
    claim_ttl_s: int = 3600  # a crashed worker's claim expires after this
    max_attempts: int = 5  # per stage; after this the document is parked as "gave up"
    retry_base_delay_s: int = 600
    retry_max_delay_s: int = 86400

    # --- validation and the publisher safety check ---------------------------------------
    validator_timeout_s: float = 3600.0
    safety_check_threshold: int = 100
    safety_check_period_s: int = 7200
    unflag_queue_name: str = ""  # Azure storage queue read for unflag requests ("" = off)

    # --- blob storage -----------------------------------------------------------------------
    local_blob_dir: str = str(Path.home() / ".iati-refresher" / "blobs")
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

    # --- run health --------------------------------------------------------------------------
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
