"""The embedded defaults of `make run` and `make up`: one place, so both show the same pipeline.

* the refresher database and Airflow's metadata database live on the project's own
  PostgreSQL cluster (``.run/pg``, :mod:`iati_refresher.local.servers`);
* blob storage is the local directory ``.run/blobs``;
* the registry is the sample registry the package ships, served on loopback;
* validation uses the built-in schema validator; Solr is not configured (indexing skipped);
* the publisher safety period is 0, so the sample's partly invalid file is cleaned at once
  instead of waiting two hours (``make run`` then shows 6 activities in the lake).

Anything set in the environment wins (a connection, a ``REFRESHER_*`` setting).
"""

from __future__ import annotations

from pathlib import Path


def embedded_settings(run_dir: Path) -> dict[str, str]:
    return {
        # says this is a demo run: missing connections may fall back to the local defaults
        "REFRESHER_EMBEDDED": "true",
        "REFRESHER_LOCAL_BLOB_DIR": str(run_dir / "blobs"),
        "REFRESHER_SAFETY_CHECK_PERIOD_S": "0",
        "REFRESHER_ALLOW_PRIVATE_ADDRESSES": "true",  # the sample registry listens on loopback
    }


def describe(env: dict[str, str], *, sample_registry: str | None, local_solr: str | None = None) -> list[str]:
    """What an embedded run uses, in words (printed by `make run` and `make up`).  Names
    connections the user set without printing them: they may hold secrets."""

    def chosen(variable: str, connection: str, default: str) -> str:
        return f"the {connection} connection" if env.get(variable) else default

    return [
        "blob storage   "
        + chosen(
            "AIRFLOW_CONN_REFRESHER_BLOB",
            "refresher_blob",
            f"local directory {env.get('REFRESHER_LOCAL_BLOB_DIR', '')}",
        ),
        "registry       "
        + (f"the sample registry at {sample_registry}" if sample_registry else "the iati_registry connection"),
        "validator      " + chosen("AIRFLOW_CONN_IATI_VALIDATOR", "iati_validator", "built-in schema validator"),
        "Solr           "
        + (
            f"SolrCloud at {local_solr} (solr/runner, Solr's own artifacts)"
            if local_solr
            else chosen("AIRFLOW_CONN_SOLR", "solr", "not configured: indexing skipped")
        ),
        f"safety period  {env.get('REFRESHER_SAFETY_CHECK_PERIOD_S', '7200')} s",
        "kind           "
        + (
            "embedded run: missing connections fall back to the local defaults"
            if env.get("REFRESHER_EMBEDDED", "").lower() in ("1", "true", "yes")
            else "deployment: a missing connection fails the preflight"
        ),
    ]
