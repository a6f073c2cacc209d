"""A complete, secret-laden test world for the reliability suites (faults, concurrency, security).

One :class:`World` is everything a pipeline run touches: real PostgreSQL and Azurite, and
loopback stand-ins for the registry and publishers, the IATI Validator API, Solr and Slack.
Every connection carries a distinctive secret (:data:`SECRETS`) so a test can prove none of
them leaks.  Blob containers are named per world, so two worlds never share data (and the
per-process client caches of ``iati_refresher.workers`` never mix them up).

:func:`run_dag` runs a DAG through ``dag.test()`` like the e2e ``run_dag`` fixture, with two
changes to Airflow's test harness only (never to our code): its idle polling sleeps 50 ms
instead of 1 s, and task retry delays are cut to Airflow's 1 s minimum.  Both restore
themselves afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from iati_refresher import connections
from iati_refresher.storage import AzureBlobStore
from tests.standins.registry_server import RegistryStandIn, bds_dataset, bds_org
from tests.standins.slack_server import SlackWebhookServer
from tests.standins.solr_server import SolrStandin
from tests.standins.validator_server import ValidatorStandin
from tests.support import digest, hostile, services

SAMPLE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher" / "sample" / "data"
ORG_A, ORG_B = "aaaaaaaa-0000-4000-8000-0000000000f1", "bbbbbbbb-0000-4000-8000-0000000000f2"
COLLECTIONS = ("activity", "transaction", "budget")
ROLES = ("source", "clean", "lake", "flat", "adhoc")

DB_PASSWORD = "db-pw-R2tY6uQ"
SOLR_USER, SOLR_PASSWORD = "indexer", "solr-pw-Q7vX2kP"
VALIDATOR_KEY = "validator-key-M4pZ9rW"
SLACK_TOKEN = "T0SECRET1/B0SECRET2/slacktokenH8wL3nJ"
#: Every secret a world hands to the pipeline; none may ever show up in logs or outputs.
SECRETS = (DB_PASSWORD, SOLR_PASSWORD, VALIDATOR_KEY, SLACK_TOKEN, services.AZURITE_KEY)

# Tunables for quick failures: short timeouts, no retry waits, no blob-client retry storms.
FAST_SETTINGS = {
    "REFRESHER_ALLOW_PRIVATE_ADDRESSES": "true",  # every stand-in listens on loopback
    "REFRESHER_PROCESS_POOL_SIZE": "2",
    "REFRESHER_BATCH_SIZE": "6",  # one batch per stage: fewer task instances, quicker runs
    "REFRESHER_RETRY_BASE_DELAY_S": "0",
    "REFRESHER_SAFETY_CHECK_PERIOD_S": "0",
    "REFRESHER_HTTP_TIMEOUT_S": "2",
    "REFRESHER_DOWNLOAD_TIMEOUT_S": "3",
    "REFRESHER_VALIDATOR_TIMEOUT_S": "2",
    "REFRESHER_SOLR_TIMEOUT_S": "5",
    "REFRESHER_SOLR_MAX_RETRIES": "1",
    "REFRESHER_BLOB_RETRY_TOTAL": "0",
}


class World:
    """The services of one pipeline under test, and ways to look at what it did.

    The reliability suites open a complete world (:func:`open_world`); a suite that sets its
    own environment may leave out Solr and Slack.
    """

    def __init__(
        self,
        tag: str,
        dbname: str,
        registry: RegistryStandIn,
        validator: ValidatorStandin,
        solr: SolrStandin | None,
        slack: SlackWebhookServer | None,
        azurite: services.Azurite,
    ):
        self.tag = tag
        self.dbname = dbname
        self.conninfo = services.conninfo(dbname)
        self.registry, self.validator, self.solr, self.slack, self.azurite = registry, validator, solr, slack, azurite
        self.blobs = AzureBlobStore(azurite.connection_string)
        self.containers = {role: f"{role}-{tag}" for role in ROLES}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.publishers = [bds_org(ORG_A, "org-a"), bds_org(ORG_B, "org-b")]
        self.files: dict[str, tuple[str, str]] = {}

    # --- the environment a deployment would set ----------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {
            **FAST_SETTINGS,
            "AIRFLOW_CONN_REFRESHER_DB": db_uri_with_password(self.dbname),
            "AIRFLOW_CONN_IATI_REGISTRY": self.registry.url,
            "AIRFLOW_CONN_IATI_VALIDATOR": json.dumps(
                {
                    "conn_type": "iati_validator",
                    "host": self.validator.url,
                    "extra": {"key_name": self.validator.key_name, "key": VALIDATOR_KEY},
                }
            ),
            "AIRFLOW_CONN_SOLR": json.dumps(
                {"conn_type": "iati_solr", "host": self.solr.base_url, "login": SOLR_USER, "password": SOLR_PASSWORD}
            ),
            "AIRFLOW_CONN_SLACK_ONCALL": self.slack.connection_json(SLACK_TOKEN),
            "AIRFLOW_CONN_REFRESHER_BLOB": json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": self.azurite.connection_string}}
            ),
        }
        env.update({f"REFRESHER_{role.upper()}_CONTAINER": name for role, name in self.containers.items()})
        return env

    # --- the registry -------------------------------------------------------------------------------

    def publish(self, doc_id: str, name: str, org: str, data: bytes, *, route: str = "") -> None:
        """Serve ``data`` and list it in the index; ``route`` prefixes the file path (``/stall``)."""
        url, hash_ = self.registry.add_dataset_file(f"{doc_id}.xml", data)
        if route:
            url = url.replace(self.registry.url, self.registry.url + route, 1)
        self.datasets[doc_id] = bds_dataset(doc_id, name, org, cached_url=url, hash_=hash_)

    def publish_file(self, name: str, data: bytes) -> tuple[str, str]:
        """Serve ``data`` as ``name`` (not listed: the test builds the index); (url, hash)."""
        self.files[name] = self.registry.add_dataset_file(name, data)
        return self.files[name]

    def serve(self, stamp: int = 1_800_000_000, only: list[str] | None = None) -> None:
        listed = [d for k, d in self.datasets.items() if only is None or k in only]
        self.registry.set_bds(self.publishers, listed, index_created=stamp)

    def publish_corpus(self) -> None:
        """Six datasets that exercise every stage: valid, partly valid, Windows-1252, Spanish,
        an organisation file (excluded at clean) and one served through ``/stall`` (which
        stalls only when a test sets ``registry.stall_s``)."""
        self.registry.stall_s = 0
        self.publish("d-valid", "org-a-valid", ORG_A, (SAMPLE / "meadowlark-activities.xml").read_bytes())
        self.publish("d-mixed", "org-a-mixed", ORG_A, (SAMPLE / "meadowlark-mixed.xml").read_bytes())
        self.publish("d-cp1252", "org-b-cp1252", ORG_B, (SAMPLE / "riverbend-sanitation-cp1252.xml").read_bytes())
        self.publish("d-es", "org-b-es", ORG_B, (SAMPLE / "condor-verde-actividades.xml").read_bytes())
        self.publish("d-org", "org-b-org", ORG_B, (SAMPLE / "condor-verde-organisation.xml").read_bytes())
        self.publish(
            "d-stall",
            "org-a-stall",
            ORG_A,
            hostile.utf8(hostile.activity("XX-HOSTILE-STALL-1"), hostile.activity("XX-HOSTILE-STALL-2")),
            route="/stall",
        )
        self.serve()

    # --- looking at the results -----------------------------------------------------------------

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.conninfo, row_factory=dict_row) as conn:
            return conn.execute(sql, args).fetchall()

    def doc(self, doc_id: str) -> dict[str, Any]:
        rows = self.rows("SELECT * FROM document WHERE id = %s", doc_id)
        assert rows, f"no document {doc_id}"
        return rows[0]

    def stage(self, doc_id: str, stage: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM document_stage WHERE document_id = %s AND stage = %s", doc_id, stage)
        return rows[0] if rows else None

    def replacements(self) -> dict[str, str]:
        names = {name: f"<{role}>" for role, name in self.containers.items()}
        return {self.registry.url: "<registry>", **names}

    def digest(self) -> digest.Digest:
        """Database + blobs + Solr, with this world's names replaced by placeholders."""
        rep = self.replacements()
        return (
            digest.database_digest(self.conninfo, rep)
            + digest.blob_digest(self.blobs, {r: c for r, c in self.containers.items() if r != "adhoc"})
            + digest.solr_digest(self.solr.base_url, COLLECTIONS, auth=(SOLR_USER, SOLR_PASSWORD), replacements=rep)
        )

    def refuse_clean_results(self) -> None:
        """Make the database reject every write of the clean stage's results (a trigger that
        raises, as a full disk would): the clean batch task then fails on every try."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("""
                CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'could not extend file: No space left on device (injected)'; END $$;
                CREATE TRIGGER injected_fault BEFORE UPDATE OF clean_end ON document
                   FOR EACH ROW EXECUTE FUNCTION injected_fault();""")

    def accept_clean_results(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("DROP TRIGGER injected_fault ON document")

    def stop_blob_storage(self) -> None:
        """Stop Azurite, keeping its data (``start_blob_storage`` brings it back on the same ports)."""
        proc = self.azurite.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    def start_blob_storage(self) -> None:
        if self.azurite.proc is None or self.azurite.proc.poll() is not None:
            self.azurite.start()


def db_uri_with_password(dbname: str) -> str:
    """The database URI with :data:`DB_PASSWORD` in it (the local cluster trusts loopback,
    so the password is accepted and ignored; a configured password is kept)."""
    uri = services.airflow_uri(dbname)
    scheme, rest = uri.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return uri if ":" in userinfo else f"{scheme}://{userinfo}:{DB_PASSWORD}@{host}"


@contextlib.contextmanager
def open_world(tag: str, dbname: str, azurite: services.Azurite, mp: pytest.MonkeyPatch) -> Iterator[World]:
    """Start the stand-ins, set the environment (through ``mp``) and create the containers."""
    with (
        RegistryStandIn() as registry,
        ValidatorStandin(key=VALIDATOR_KEY) as validator,
        SolrStandin(auth=(SOLR_USER, SOLR_PASSWORD)) as solr,
        SlackWebhookServer() as slack,
    ):
        world = World(tag, dbname, registry, validator, solr, slack, azurite)
        for key, value in world.environment().items():
            mp.setenv(key, value)
        # Connections come from this world's variables, not from what an earlier in-process
        # test preloaded.
        mp.setattr(connections, "_PRELOADED", {})
        world.blobs.ensure_containers(world.containers.values())
        try:
            yield world
        finally:
            world.start_blob_storage()  # a test that stopped it must not break the next one


# --- dag.test() without its idle seconds ---------------------------------------------------------

_DAG_TEST_LOOP = os.path.join("airflow", "sdk", "definitions", "dag.py")


@contextlib.contextmanager
def quick_dag_test(dag: Any) -> Iterator[None]:
    """Shorten what ``dag.test()`` waits for: its 1 s idle polls, and task retry delays.

    ``dag.test()`` serialises the DAG object it is called on, so retry settings changed on
    its tasks are the ones its scheduling loop uses.  Only sleeps called from that loop are
    shortened; every other caller of ``time.sleep`` (our code included) is untouched.
    """
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1).f_code.co_filename
        real_sleep(0.05 if caller.endswith(_DAG_TEST_LOOP) else seconds)

    saved = {task_id: (task.retry_delay, task.max_retry_delay) for task_id, task in dag.task_dict.items()}
    time.sleep = sleep
    try:
        for task in dag.task_dict.values():
            task.retry_delay = timedelta(0)
            task.max_retry_delay = timedelta(seconds=1)
        yield
    finally:
        time.sleep = real_sleep
        for task_id, (delay, max_delay) in saved.items():
            dag.task_dict[task_id].retry_delay = delay
            dag.task_dict[task_id].max_retry_delay = max_delay


def run_dag(
    dagbag: Any, dag_id: str, conf: dict[str, Any] | None = None, *, quick: bool = True
) -> tuple[Any, dict[str, str], dict[str, int]]:
    """Run ``dag_id`` once through ``dag.test()``; returns (dag run, {task[map]: state},
    {task[map]: try number}).  ``quick``: without its idle seconds (:func:`quick_dag_test`)."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    dag = dagbag.dags[dag_id]
    with quick_dag_test(dag) if quick else contextlib.nullcontext():
        dag_run = dag.test(run_conf=conf) if conf is not None else dag.test()
    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dag_run.run_id)
            .all()
        )
        names = {ti: ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]" for ti in tis}
        states = {names[ti]: str(ti.state) for ti in tis}
        tries = {names[ti]: int(ti.try_number) for ti in tis}
    return dag_run, states, tries


def succeeded(dag_run: Any) -> bool:
    return str(dag_run.state).endswith("success")


# --- the fault-free reference -------------------------------------------------------------------

#: Documents of the corpus that end up searchable (d-org, an organisation file, stops at clean).
INDEXED = ("d-valid", "d-mixed", "d-cp1252", "d-es", "d-stall")
_REFERENCE: dict[str, digest.Digest] = {}


def reference_digest(pg_template: str, azurite: services.Azurite, dagbag: Any) -> digest.Digest:
    """The digest of one fault-free ``iati_refresh`` run of the corpus in a world of its own,
    computed once per test session (the fault and concurrency suites compare against it)."""
    if "corpus" in _REFERENCE:
        return _REFERENCE["corpus"]
    from iati_refresher.db import repository as repo
    from iati_refresher.db.connection import connect

    name = services.create_database(template=pg_template)
    try:
        with pytest.MonkeyPatch.context() as mp, open_world("reference", name, azurite, mp) as world:
            world.publish_corpus()
            run, states, _ = run_dag(dagbag, "iati_refresh")
            assert succeeded(run), states
            with connect(world.conninfo) as conn:
                assert set(repo.stage_backlogs(conn, safety_period_s=0).values()) == {0}, "one run does it all"
                assert not conn.execute(
                    "SELECT 1 FROM document_stage WHERE outcome IN ('failed', 'gave_up')"
                ).fetchall()
            for doc_id in INDEXED:
                assert world.doc(doc_id)["solr_indexed_hash"] == world.doc(doc_id)["hash"], doc_id
            assert world.stage("d-org", "clean")["code"] == "organisation_file"
            assert digest.unexpired_claims(world.conninfo) == []
            _REFERENCE["corpus"] = world.digest()
    finally:
        services.drop_database(name)
    return _REFERENCE["corpus"]


def assert_converged(world: World, reference: digest.Digest) -> None:
    """The world's database, blobs and Solr equal the reference's, and no claim is left."""
    got = world.digest()
    assert got.parts == reference.parts, "\n".join(got.diff(reference))
    assert digest.unexpired_claims(world.conninfo) == [], "every claim is released"
