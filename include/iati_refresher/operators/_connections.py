"""Operators take their own ``*_conn_id``s; the pipeline code they call reads the pipeline's
connection roles.  :func:`as_roles` looks the operator's connections up once (through
Airflow) and fixes them under the roles for the duration of the call — and for the stage
worker processes the call starts, which get the task's resolved connections."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from iati_refresher import connections


@contextlib.contextmanager
def as_roles(**conn_ids: str) -> Iterator[dict[str, connections.ConnectionInfo | None]]:
    """``as_roles(solr="my_solr", refresher_blob="my_blob")``: role → the connection named."""
    resolved = {role: connections.get_connection(conn_id) for role, conn_id in conn_ids.items()}
    with connections.preloaded(resolved):
        yield resolved
