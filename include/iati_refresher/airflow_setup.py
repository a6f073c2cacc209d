"""Airflow objects the DAGs need besides code: the pools, one per external system.

``python -m iati_refresher.airflow_setup`` creates or updates them in the metadata
database (``make up``, the compose stack's init service and the tests call it).  Their
sizes come from the settings (README, "Running on Celery and Kubernetes"), never from the
CPU count of whichever machine runs this command.
"""

from __future__ import annotations

from iati_refresher.settings import Settings, get_settings


def pools(settings: Settings) -> dict[str, tuple[int, str]]:
    """name → (slots, description).  Slots are mapped task instances at once, not documents:
    each download instance runs several threads, each CPU-bound instance a pool of
    ``process_pool_size`` worker processes on the worker that runs it."""
    cpu_slots = max(1, settings.airflow_workers * settings.cpu_slots_per_worker)
    return {
        "iati_publishers": (4, "download batches (publisher servers / Bulk Data Service)"),
        "iati_validator": (2, "validation batches (IATI Validator API or the built-in validator)"),
        "refresher_cpu": (
            cpu_slots,
            f"clean, flatten and lakify batches (CPU-bound): {settings.airflow_workers} "
            f"workers x {settings.cpu_slots_per_worker} slots",
        ),
        "solr": (2, "Solr indexing batches"),
    }


def ensure_pools(settings: Settings | None = None) -> dict[str, int]:
    from airflow.models.pool import Pool

    sized = pools(settings or get_settings())
    for name, (slots, description) in sized.items():
        Pool.create_or_update_pool(name=name, slots=slots, description=description, include_deferred=False)
    return {name: slots for name, (slots, _) in sized.items()}


if __name__ == "__main__":
    print("pools:", ", ".join(f"{name} ({slots} slots)" for name, slots in ensure_pools().items()))
