"""The pools are sized by the deployment's settings, not by the CPUs of the machine that
runs ``python -m iati_refresher.airflow_setup``."""

from __future__ import annotations

import os

from iati_refresher.airflow_setup import pools
from iati_refresher.settings import Settings, usable_cpus


def test_the_cpu_pool_is_workers_times_slots() -> None:
    assert pools(Settings(airflow_workers=3, cpu_slots_per_worker=2))["refresher_cpu"][0] == 6
    assert pools(Settings())["refresher_cpu"][0] == 1
    assert pools(Settings(airflow_workers=0))["refresher_cpu"][0] == 1, "never a pool nothing can run in"


def test_the_process_pool_defaults_to_the_cpus_each_slot_gets(monkeypatch) -> None:
    monkeypatch.delenv("REFRESHER_PROCESS_POOL_SIZE", raising=False)
    monkeypatch.setenv("REFRESHER_CPU_SLOTS_PER_WORKER", "2")
    assert Settings.from_env().process_pool_size == max(1, usable_cpus() // 2)
    monkeypatch.setenv("REFRESHER_CPU_SLOTS_PER_WORKER", str(10 * (os.cpu_count() or 1)))
    assert Settings.from_env().process_pool_size == 1


def test_usable_cpus_respects_the_affinity() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
