"""Document leases held by a batch: the owner name and the thread renewing them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import psycopg

from iati_refresher.db import repository as repo
from iati_refresher.db.types import Db

log = logging.getLogger(__name__)


def batch_owner(run_id: str, stage: str, key: str) -> str:
    """The claim owner of one batch: the same for every try of its task, so a retry (or the
    summary, after the task was lost) can take over claims a dead try left behind."""
    return f"{run_id}:{stage}:{key}"


class ClaimKeeper:
    """Renews a batch's claims every third of the lease while the batch works on them.

    A batch may take longer than ``claim_ttl_s`` (a slow Validator, big files): without
    renewal its documents would be handed to another run while still being processed.
    The renewals stop with the batch, and with its process if that is killed, so a dead
    worker's claims still expire after one lease.  The keeper opens its own connection,
    and only once a renewal is due (most batches end before that).
    """

    def __init__(self, open_connection: Callable[[], Db], ids: Sequence[str], owner: str, ttl_s: int):
        self.open_connection, self.ids, self.owner, self.ttl_s = open_connection, list(ids), owner, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claims-{owner}", daemon=True)

    def start(self) -> ClaimKeeper:
        if self.ids:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        conn: Db | None = None
        try:
            while not self._stop.wait(max(0.1, self.ttl_s / 3)):
                try:
                    conn = conn or self.open_connection()
                    held = repo.renew_claims(conn, self.ids, self.owner, self.ttl_s)
                    conn.commit()
                except psycopg.Error as exc:  # the batch's own connection will report it too
                    log.warning("could not renew the claims of %s: %s", self.owner, exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if held < len(self.ids):
                    log.warning(
                        "%s holds %d of its %d claims: the others expired and were taken",
                        self.owner,
                        held,
                        len(self.ids),
                    )
        finally:
            if conn is not None:
                conn.close()
