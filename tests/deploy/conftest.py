"""The deployment tier shares the end-to-end tier's Airflow metadata and DagBag fixtures
(the dag.test() reference run it compares against needs them)."""

from tests.e2e.conftest import airflow_metadata, dagbag  # noqa: F401 - fixtures
