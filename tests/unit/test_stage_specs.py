"""One definition per stage (iati_refresher.stage_specs): every part a stage names exists, and
the stage SQL of the repository covers exactly the stages the specs define."""

from __future__ import annotations

import inspect

import pytest

from iati_refresher import airflow_setup, stage_specs
from iati_refresher.db import repository as repo
from iati_refresher.settings import Settings
from iati_refresher.stage_specs import SPECS, STAGES


def test_the_stages_in_pipeline_order() -> None:
    assert STAGES == ("download", "validate", "clean", "flatten", "lakify", "index")
    assert repo.STAGES == STAGES


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_function_a_stage_names_exists(spec: stage_specs.StageSpec) -> None:
    worker = spec.worker_fn()
    assert list(inspect.signature(worker).parameters) == ["doc", "settings"]
    assert list(inspect.signature(spec.record_fn()).parameters) == ["conn", "doc", "outcome"]
    prepare = spec.prepare_fn()
    if prepare is not None:
        assert list(inspect.signature(prepare).parameters) == ["conn", "docs"]
    if spec.batch_operator:
        assert hasattr(stage_specs.load(spec.batch_operator), "partial")
    assert spec.pool_kind in ("thread", "process")
    assert spec.pool in airflow_setup.pools(Settings())


def test_the_repository_sql_covers_exactly_the_stages() -> None:
    for table in (repo.READY, repo.REVIVED_BY, repo.START_COLUMN, repo.RESET_FROM):
        assert set(table) == set(STAGES)
    assert tuple(repo.RESET_FROM) == STAGES, "a reset clears (and previews) the columns in pipeline order"
    assert set(repo.ORDER) <= set(STAGES)
    assert set(repo.REQUEST_FLAGS) <= set(STAGES)


def test_reading_a_spec_imports_no_stage_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, iati_refresher.stage_specs as s; s.STAGE_WORDS; "
        "print(sorted(m for m in sys.modules if m.startswith('iati_refresher')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['iati_refresher', 'iati_refresher.stage_specs']"


def test_where_an_operator_rerun_starts() -> None:
    assert stage_specs.first_stage("clean", force_redownload=False) == "clean"
    assert stage_specs.first_stage("clean", force_redownload=True) == "download"
    assert stage_specs.stages_from("lakify") == ("lakify", "index")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_specs.stages_from("solrize")


def test_the_words_of_the_status_page_and_the_exclusions_come_from_the_specs() -> None:
    from iati_refresher import pipeline, status

    assert status.STAGE_WORDS["lakify"] == "lakify (activity lake)"
    assert ("clean", "meta_conflict") in pipeline.EXCLUDES_FROM_DATASTORE
    assert ("validate", "too_large") in pipeline.EXCLUDES_FROM_DATASTORE
    assert len(pipeline.EXCLUDES_FROM_DATASTORE) == 8
