"""Fetch, store or remove blobs of the refresher's storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from iati_refresher.connections import BLOB_STORAGE

ACTIONS = ("fetch", "store", "remove", "remove_prefix", "list")


class RefresherBlobOperator(BaseOperator):
    """One operation on the refresher's blob storage (Azure through the ``wasb`` connection,
    or the local directory of an embedded run).

    * ``fetch``: blob ``name`` → the local file ``path`` (returns its size);
    * ``store``: the local file ``path`` (or ``data``) → blob ``name``;
    * ``remove``: the blobs ``names`` (returns how many were deleted);
    * ``remove_prefix``: every blob under ``prefix`` (returns how many);
    * ``list``: the names under ``prefix``.

    :param container: the container (templated).
    :param blob_conn_id: the blob storage connection (type ``wasb``).
    """

    template_fields: Sequence[str] = ("container", "name", "names", "prefix", "path")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        action: str,
        container: str,
        name: str | None = None,
        names: Sequence[str] | None = None,
        prefix: str = "",
        path: str | None = None,
        data: bytes | None = None,
        blob_conn_id: str = BLOB_STORAGE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        self.action, self.container, self.name, self.names = action, container, name, list(names or [])
        self.prefix, self.path, self.data, self.blob_conn_id = prefix, path, data, blob_conn_id

    def execute(self, context: Context) -> Any:
        from iati_refresher.operators._connections import as_roles
        from iati_refresher.settings import get_settings
        from iati_refresher.storage import blob_store

        with as_roles(**{BLOB_STORAGE: self.blob_conn_id}), blob_store(get_settings()) as store:
            if self.action == "fetch":
                return store.get_to_file(self.container, self._name(), self._path())
            if self.action == "store":
                if self.data is not None:
                    store.put_bytes(self.container, self._name(), self.data)
                else:
                    store.put_file(self.container, self._name(), self._path())
                return self._name()
            if self.action == "remove":
                removed = store.delete(self.container, self.names)
                self.log.info("removed %d of %d blobs from %s", removed, len(self.names), self.container)
                return removed
            if self.action == "remove_prefix":
                return store.delete_prefix(self.container, self.prefix)
            return list(store.list(self.container, self.prefix))

    def _name(self) -> str:
        if not self.name:
            raise ValueError(f"{self.action} needs a blob name")
        return self.name

    def _path(self) -> str:
        if not self.path:
            raise ValueError(f"{self.action} needs a local path")
        return self.path
