"""One import for the client factories the pipeline and workers use (none imports Airflow).

Each factory reads its connection through :mod:`iati_refresher.connections`, so in a worker
process it sees the connections the task resolved and preloaded.
"""

from __future__ import annotations

from iati_refresher.registry.sources import registry_for
from iati_refresher.solr_client import solr_for
from iati_refresher.validator_client import validator_for

__all__ = ["registry_for", "solr_for", "validator_for"]
