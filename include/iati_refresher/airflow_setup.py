"""Airflow objects the DAGs need besides code: the pools, one per external system.

``python -m iati_refresher.airflow_setup`` creates or updates them in the metadata
database (``make up``, the compose stack's init service and the tests call it).
"""

from __future__ import annotations

import os

# name → (slots, description).  Slots are mapped task instances at once, not documents:
# each download instance runs several threads, each CPU instance a process pool.
POOLS: dict[str, tuple[int, str]] = {
    "iati_publishers": (4, "download batches (publisher servers / Bulk Data Service)"),
    "iati_validator": (2, "validation batches (IATI Validator API or the built-in validator)"),
    "refresher_cpu": (max(1, (os.cpu_count() or 2) // 2), "clean, flatten and lakify batches (CPU-bound)"),
    "solr": (2, "Solr indexing batches"),
}


def ensure_pools() -> list[str]:
    from airflow.models.pool import Pool

    for name, (slots, description) in POOLS.items():
        Pool.create_or_update_pool(name=name, slots=slots, description=description, include_deferred=False)
    return list(POOLS)


if __name__ == "__main__":
    print("pools:", ", ".join(ensure_pools()))
