"""IATI Refresher on Airflow: the pipeline's stage logic, hooks, database and CLI."""

__version__ = "0.1.0"
