"""The IATI Validator API as an Airflow hook (connection ``iati_validator``, type ``iati_validator``).

* host, port and schema give the base URL, e.g. host ``https://api.iatistandard.org``,
  schema ``validator``;
* the API key goes in the password; the extra ``key_name`` names its header (default
  ``x-functions-key``); optional extras ``schema_path``, ``validate_path``, ``timeout_s``.

Connections of type ``http`` made for earlier versions work the same.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from iati_refresher.connections import VALIDATOR, ConnectionInfo
from iati_refresher.settings import Settings, get_settings
from iati_refresher.validator_client import ValidatorClient, client_from_connection


class IatiValidatorHook(BaseHook):
    """Builds a :class:`~iati_refresher.validator_client.ValidatorClient` from a connection.

    :param iati_validator_conn_id: the connection id (default ``iati_validator``).
    :param settings: tunables (the timeout); default from the environment.
    """

    conn_name_attr = "iati_validator_conn_id"
    default_conn_name = VALIDATOR
    conn_type = "iati_validator"
    hook_name = "IATI Validator API"

    def __init__(
        self, iati_validator_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.iati_validator_conn_id = iati_validator_conn_id
        self.settings = settings or get_settings()

    def get_conn(self) -> ValidatorClient:
        """A new client for the connection (the caller closes it)."""
        info = ConnectionInfo.of(self.iati_validator_conn_id, self.get_connection(self.iati_validator_conn_id))
        return client_from_connection(info, self.settings)

    def test_connection(self) -> tuple[bool, str]:
        """Ask the API for its version, with the key (the UI's Test button)."""
        try:
            with self.get_conn() as client:
                version = client.version()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"IATI Validator API {version}"
