"""One definition per pipeline stage: what the DAGs, the planner, the workers, the outcome
recorder and the status page read about a stage.

A stage is the :class:`StageSpec` in :data:`SPECS` (their order is the pipeline's) plus its
SQL in :mod:`iati_refresher.db.repository` — when a document is ready (``READY``), what
revives a parked one (``REVIVED_BY``), the batch order (``ORDER``), its start marker
(``START_COLUMN``), what an operator reset clears (``RESET_FROM``) and the flag another
service sets to ask for it again (``REQUEST_FLAGS``).  The SQL stays there because every
statement is built only from that module's literal constants (tests/unit/test_security.py);
``tests/unit/test_stage_specs.py`` checks the two agree.

The functions a stage runs are named by dotted path (``module:function``) and imported when
first used, so reading a spec (a DAG file parse, the status page) imports no stage code.
This module imports nothing of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

PoolKind = Literal["thread", "process"]


@dataclass(frozen=True)
class StageSpec:
    """Everything about one stage but its SQL (see the module docstring)."""

    #: The stage's name: task ids, ``document_stage.stage``, the repository's SQL keys.
    name: str
    #: What it reads and writes (documentation; the status page and ARCHITECTURE.md use it).
    reads: str
    writes: str
    #: When a document is ready for it, and what resets it, in words (the SQL is the repository's).
    ready_when: str
    reset_by: str
    #: The Airflow pool of its batch tasks (one per external system; CPU-bound stages share one).
    pool: str
    #: How a batch runs its documents: worker processes (CPU-bound) or threads (network-bound).
    pool_kind: PoolKind
    #: ``module:function`` run per document in a worker: ``fn(doc, settings) -> outcome dict``.
    worker: str
    #: ``module:function`` writing one outcome to the reference's columns:
    #: ``fn(conn, doc, outcome)`` (the stage record itself is written by the caller).
    record: str
    #: The status page's words for the stage ("Gave up at {words}", "{Words} failed").
    words: str
    #: ``module:function`` run once per batch before the workers: ``fn(conn, docs) -> docs still
    #: needing a worker`` (adds what they need from the database, settles what needs none).
    prepare: str | None = None
    #: Threads per batch instead of ``REFRESHER_PROCESS_POOL_SIZE`` (thread pools only).
    threads: int | None = None
    #: With this connection configured the stage waits on a remote service: threads, not processes.
    remote_with: str | None = None
    #: A connection the stage cannot run without; when missing in an embedded run, the stage is
    #: not planned and the summary says so (``unavailable_reason``).
    optional_connection: str | None = None
    #: Connections a batch checks again before it touches a document (deleted since preflight?).
    requires: tuple[str, ...] = ()
    #: Skip codes that exclude the new version for good: the old version leaves Solr.
    excludes_from_datastore: frozenset[str] = field(default_factory=frozenset)
    #: ``module:Class`` of an operator that runs its batches (``Class.partial(...).expand(batch=)``)
    #: instead of the generic batch task.
    batch_operator: str | None = None

    def worker_fn(self) -> Callable[..., dict[str, Any]]:
        return load(self.worker)

    def record_fn(self) -> Callable[..., None]:
        return load(self.record)

    def prepare_fn(self) -> Callable[..., list[dict[str, Any]]] | None:
        return load(self.prepare) if self.prepare else None


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="download",
        reads="the dataset's URL (registry record)",
        writes="source/{hash}.xml; document.downloaded, download_error, source_*",
        ready_when="never downloaded (a new or changed dataset: sync clears the marker)",
        reset_by="a new hash from the registry; an operator re-run",
        pool="iati_publishers",
        pool_kind="thread",
        threads=8,
        worker="iati_refresher.workers:download",
        record="iati_refresher.pipeline.recording:record_download",
        words="download",
    ),
    StageSpec(
        name="validate",
        reads="source/{hash}.xml",
        writes="validation (report); document.validation, file_schema_valid, validation_api_error",
        ready_when="downloaded, no report yet (or regenerate_validation_report), not held by the safety check",
        reset_by="regenerate_validation_report (validator-services); an operator re-run",
        pool="iati_validator",
        pool_kind="process",
        remote_with="iati_validator",
        requires=("iati_validator",),
        worker="iati_refresher.workers:validate",
        prepare="iati_refresher.pipeline.recording:prepare_validate",
        record="iati_refresher.pipeline.recording:record_validate",
        words="validation",
        excludes_from_datastore=frozenset({"too_large", "doctype_refused"}),
    ),
    StageSpec(
        name="clean",
        reads="source/{hash}.xml and its validation report",
        writes="clean/{hash}.xml (valid activities only); document.clean_*",
        ready_when="validated and not cleaned",
        reset_by="a new validation; an operator re-run",
        pool="refresher_cpu",
        pool_kind="process",
        worker="iati_refresher.workers:clean",
        prepare="iati_refresher.pipeline.recording:prepare_clean",
        record="iati_refresher.pipeline.recording:record_clean",
        words="cleaning",
        excludes_from_datastore=frozenset(
            {"meta_conflict", "no_valid_activities", "not_iati", "version_1x", "organisation_file", "doctype_refused"}
        ),
    ),
    StageSpec(
        name="flatten",
        reads="clean/{hash}.xml",
        writes="flat/{document_id}/{hash}.jsonl (+ manifest); document.flatten_*, flattened_activities",
        ready_when="cleaned and not flattened",
        reset_by="datastore-services clearing flatten_end; an operator re-run",
        pool="refresher_cpu",
        pool_kind="process",
        worker="iati_refresher.workers:flatten",
        record="iati_refresher.pipeline.recording:record_flatten",
        words="flattening",
    ),
    StageSpec(
        name="lakify",
        reads="clean/{hash}.xml",
        writes="lake/{document_id}/{sha1(identifier)}.xml|json, flat/{document_id}/{hash}.lake.tsv; document.lakify_*",
        ready_when="cleaned and not lakified",
        reset_by="datastore-services clearing lakify_end; the index stage finding the lake missing; an operator re-run",
        pool="refresher_cpu",
        pool_kind="process",
        worker="iati_refresher.workers:lakify",
        record="iati_refresher.pipeline.recording:record_lakify",
        words="lakify (activity lake)",
    ),
    StageSpec(
        name="index",
        reads="flat/{document_id}/{hash}.jsonl and the lake bundle",
        writes="Solr activity, transaction and budget documents; document.solrize_*, solr_indexed_hash",
        ready_when="flattened and lakified, not indexed (or solrize_reindex)",
        reset_by="solrize_reindex (datastore-services); an operator re-run",
        pool="solr",
        pool_kind="process",
        optional_connection="solr",
        requires=("solr",),
        worker="iati_refresher.workers:index",
        record="iati_refresher.pipeline.recording:record_index",
        words="indexing",
        batch_operator="iati_refresher.operators:SolrIndexOperator",
    ),
)

#: The stage names in pipeline order.
STAGES: tuple[str, ...] = tuple(spec.name for spec in SPECS)
BY_NAME: dict[str, StageSpec] = {spec.name: spec for spec in SPECS}
#: (stage, skip code) pairs that exclude a new version from the datastore for good.
EXCLUDES_FROM_DATASTORE: frozenset[tuple[str, str]] = frozenset(
    (spec.name, code) for spec in SPECS for code in spec.excludes_from_datastore
)
#: The status page's words per stage.
STAGE_WORDS: dict[str, str] = {spec.name: spec.words for spec in SPECS}


def spec(stage: str) -> StageSpec:
    try:
        return BY_NAME[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}") from None


def stages_from(first: str) -> tuple[str, ...]:
    """``first`` and every later stage, in order."""
    spec(first)
    return STAGES[STAGES.index(first) :]


def first_stage(from_stage: str, *, force_redownload: bool) -> str:
    """Where an operator re-run starts: ``from_stage``, or download when it must fetch again."""
    return STAGES[0] if force_redownload else spec(from_stage).name


def load(path: str) -> Any:
    """The object a ``module:name`` path names (imported on first use)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
