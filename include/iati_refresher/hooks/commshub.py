"""The IATI Communications Hub as an Airflow hook (connection ``iati_commshub``, type
``iati_commshub``): where black-flag notices are posted.

The host (+ schema as path) is the notification endpoint; the password is the function key,
sent in the header named by extra ``key_name`` (default ``x-functions-key``).
"""

from __future__ import annotations

from typing import Any

import httpx
from airflow.sdk import BaseHook

from iati_refresher.connections import COMMSHUB, ConnectionInfo
from iati_refresher.notify import CommsHubClient, commshub_from_connection
from iati_refresher.settings import Settings, get_settings


class CommsHubHook(BaseHook):
    """The Communications Hub behind a connection (``get_conn()`` returns the plain client).

    :param commshub_conn_id: the connection id (default ``iati_commshub``).
    """

    conn_name_attr = "commshub_conn_id"
    default_conn_name = COMMSHUB
    conn_type = "iati_commshub"
    hook_name = "IATI Communications Hub"

    def __init__(self, commshub_conn_id: str = default_conn_name, settings: Settings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.commshub_conn_id = commshub_conn_id
        self.settings = settings or get_settings()

    def connection_info(self) -> ConnectionInfo:
        return ConnectionInfo.of(self.commshub_conn_id, self.get_connection(self.commshub_conn_id))

    def get_conn(self) -> CommsHubClient:
        """A new client (the caller closes it)."""
        return commshub_from_connection(self.connection_info(), self.settings)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the endpoint without posting a notice (a POST would notify people): an OPTIONS
        request with the key; a 5xx, a refused key (401/403) or no answer fails the test."""
        try:
            info = self.connection_info()
            client = commshub_from_connection(info, self.settings)
            try:
                response = client.probe()
            finally:
                client.close()
        except (httpx.HTTPError, ValueError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if response >= 500 or response in (401, 403):
            return False, f"the Communications Hub answered HTTP {response}"
        return True, f"the Communications Hub answered HTTP {response} (no notice sent)"
