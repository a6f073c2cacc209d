"""Airflow hooks (provider shape) that build the package's plain clients from connections."""
