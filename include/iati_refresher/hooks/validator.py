"""Airflow hook for the IATI Validator API (provider shape).

Connection ``iati_validator`` (type ``http``):

* host, port and schema give the base URL, e.g. host ``https://api.iatistandard.org``,
  schema ``validator``;
* the key goes in the password (or extra ``key``); extra ``key_name`` names its header
  (default ``x-functions-key``);
* optional extras ``schema_path``, ``validate_path``, ``timeout_s``.

Without the connection the pipeline validates with the built-in XSD validator
(:func:`validator_for`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher.connections import VALIDATOR, ConnectionInfo
from iati_refresher.settings import Settings, get_settings
from iati_refresher.validator_client import (
    DEFAULT_KEY_NAME,
    DEFAULT_SCHEMA_PATH,
    DEFAULT_VALIDATE_PATH,
    BuiltinValidatorClient,
    ValidatorClient,
    client_from_connection,
    validator_for,
)

__all__ = ["BuiltinValidatorClient", "IatiValidatorHook", "ValidatorClient", "validator_for"]


class IatiValidatorHook(BaseHook):
    """Builds a :class:`~iati_refresher.validator_client.ValidatorClient` from a connection.

    :param iati_validator_conn_id: the connection id (default ``iati_validator``).
    :param settings: tunables (the timeout); default from the environment.
    """

    conn_name_attr = "iati_validator_conn_id"
    default_conn_name = VALIDATOR
    conn_type = "http"
    hook_name = "IATI Validator API"

    def __init__(self, iati_validator_conn_id: str = default_conn_name, settings: Settings | None = None) -> None:
        super().__init__()
        self.iati_validator_conn_id = iati_validator_conn_id
        self.settings = settings or get_settings()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"password": "API key", "schema": "Base path"},
            "placeholders": {
                "host": "https://api.iatistandard.org",
                "schema": "validator",
                "password": "Validator API key",
                "extra": (
                    f'{{"key_name": "{DEFAULT_KEY_NAME}", "schema_path": "{DEFAULT_SCHEMA_PATH}", '
                    f'"validate_path": "{DEFAULT_VALIDATE_PATH}"}}'
                ),
            },
        }

    def get_conn(self) -> ValidatorClient:
        info = ConnectionInfo.of(self.iati_validator_conn_id, self.get_connection(self.iati_validator_conn_id))
        client = client_from_connection(info, self.settings)
        self.log.info("Validator API at %s (key header %s)", client.base_url, client.key_name)
        return client
