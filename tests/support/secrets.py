"""Secrets backends for the tests, configured as a deployment would (``[secrets] backend``)."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from airflow.secrets import BaseSecretsBackend


class UnreachableVault(BaseSecretsBackend):
    """A vault that cannot be reached: every lookup raises (Airflow logs it at debug level
    and tries the next backend, so a connection held only here reads as "not found")."""

    def get_conn_value(self, conn_id: str) -> str | None:
        raise ConnectionError(f"vault.example.org: connection refused (looking up {conn_id})")


class DenyingVault(BaseSecretsBackend):
    """A vault that refuses access: Airflow lets this error through."""

    def get_conn_value(self, conn_id: str) -> str | None:
        raise AirflowSecretsBackendAccessDenied(f"access to {conn_id} denied by policy")


class OutageVault(BaseSecretsBackend):
    """A vault that holds none of the test's connections (they come from the environment)
    and refuses access to some of them while particular tasks run — a backend that goes
    away in the middle of a run.  ``REFRESHER_TEST_VAULT_OUTAGE="conn_id@task_id,…"``; the
    running task is the one Airflow's task runner names in ``AIRFLOW_CTX_TASK_ID``."""

    def get_conn_value(self, conn_id: str) -> str | None:
        import os

        task = os.environ.get("AIRFLOW_CTX_TASK_ID", "")
        for outage in filter(None, os.environ.get("REFRESHER_TEST_VAULT_OUTAGE", "").split(",")):
            denied_conn, _, denied_task = outage.partition("@")
            if conn_id == denied_conn and task == denied_task:
                raise AirflowSecretsBackendAccessDenied(f"vault.example.org is sealed (looking up {conn_id})")
        return None
