"""Publisher safety check I/O: flag messages, the Communications Hub, the unflag queue.

* :func:`flag_message` is the text people read (Slack) when a publisher is black-flagged;
  :func:`flag_reason` is the shorter reason sent to the Communications Hub.
* :class:`CommsHubClient` posts ``{"type": "NEW_BLACK_FLAG", "data": {"publisherId", "reason"}}``
  (connection ``iati_commshub``; HTTP 200 means delivered).
* :class:`UnflagQueue` reads the reference's Azure storage queue of unflag requests (message
  text = the publisher's org id) and deletes messages only once the caller has acted on them.

Plain Python (no Airflow).  Secrets never appear in ``repr`` or messages.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from iati_refresher.connections import COMMSHUB, ConnectionInfo, get_connection
from iati_refresher.settings import Settings

log = logging.getLogger(__name__)

COMMSHUB_EVENT = "NEW_BLACK_FLAG"
DEFAULT_KEY_NAME = "x-functions-key"
UNFLAG_DAG_ID = "iati_unflag_publisher"


# ---------------------------------------------------------------------------------------
# message text
# ---------------------------------------------------------------------------------------


def describe_period(seconds: int) -> str:
    """``7200`` → ``2 hours``; ``90`` → ``90 seconds``; ``86400`` → ``1 day``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def flag_reason(threshold: int, period_s: int) -> str:
    """The reason sent to the Communications Hub (the reference's text, without its stray ')')."""
    return f"Over {threshold} critical documents in the last {describe_period(period_s)}."


def flag_message(publisher: dict[str, Any], *, threshold: int, period_s: int) -> str:
    """Slack text announcing a new black flag, with what it means and how to lift it.

    :param publisher: ``org_id``, ``name`` (short name), optionally ``title`` and ``black_flag``.
    """
    org_id = publisher["org_id"]
    name = publisher.get("name") or org_id
    title = publisher.get("title") or name
    flagged_at = publisher.get("black_flag")
    when = f" at {flagged_at:%Y-%m-%d %H:%M} UTC" if isinstance(flagged_at, datetime) else ""
    return (
        f":warning: IATI publisher black-flagged{when}: *{title}* (`{name}`, org id `{org_id}`).\n"
        f"More than {threshold} of its documents downloaded in the last {describe_period(period_s)} "
        "failed the IATI schema check, so full validation of its schema-invalid documents is paused "
        "(its schema-valid documents carry on).\n"
        f"Once the publisher has fixed its data, unflag it: trigger the `{UNFLAG_DAG_ID}` DAG with "
        f'`{{"publisher": "{name}"}}` (the org id works too).'
    )


# ---------------------------------------------------------------------------------------
# Communications Hub
# ---------------------------------------------------------------------------------------


class CommsHubClient:
    """Posts black-flag notifications to the IATI Communications Hub.

    :param url: the notification endpoint (the reference's ``COMMSHUB_URL``).
    :param key: the function key, sent in the ``key_name`` header; never shown.
    """

    def __init__(
        self,
        url: str,
        key: str = "",
        key_name: str = DEFAULT_KEY_NAME,
        timeout_s: float = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = url
        self.key_name = key_name
        self._client = httpx.Client(headers={key_name: key} if key else {}, timeout=timeout_s, transport=transport)

    def __repr__(self) -> str:
        return f"CommsHubClient(url={self.url!r}, key_name={self.key_name!r})"

    def notify_new_flag(self, org_id: str, reason: str) -> bool:
        """Send ``NEW_BLACK_FLAG`` for ``org_id``; True only on HTTP 200 (never raises for HTTP trouble)."""
        payload = {"type": COMMSHUB_EVENT, "data": {"publisherId": org_id, "reason": reason}}
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:
            log.warning("Communications Hub unreachable for %s: %s", org_id, type(exc).__name__)
            return False
        if response.status_code != 200:
            log.warning("Communications Hub answered %s for %s", response.status_code, org_id)
            return False
        return True

    def probe(self) -> int:
        """The HTTP status of an OPTIONS request to the endpoint (the key sent): reachability
        without notifying anyone.  Raises :class:`httpx.HTTPError` when there is no answer."""
        return self._client.options(self.url).status_code

    def close(self) -> None:
        self._client.close()


def commshub_from_connection(conn: ConnectionInfo, settings: Settings) -> CommsHubClient:
    """Connection ``iati_commshub``: host (+ schema as path) is the endpoint; the key is the
    password or extra ``key``; extra ``key_name`` names the header (default ``x-functions-key``)."""
    return CommsHubClient(
        conn.base_url(default_scheme="https"),
        key=str(conn.extra.get("key") or conn.password or ""),
        key_name=str(conn.extra.get("key_name") or DEFAULT_KEY_NAME),
        timeout_s=float(conn.extra.get("timeout_s") or settings.http_timeout_s),
    )


def commshub_for(settings: Settings) -> CommsHubClient | None:
    """The Communications Hub client, or None when ``iati_commshub`` is not configured."""
    conn = get_connection(COMMSHUB)
    if conn is None or not conn.host:
        return None
    return commshub_from_connection(conn, settings)


# ---------------------------------------------------------------------------------------
# unflag queue
# ---------------------------------------------------------------------------------------


class UnflagQueueError(RuntimeError):
    """The storage queue could not be read or updated (service or network trouble)."""


@dataclass(frozen=True)
class UnflagRequest:
    """One queue message asking to unflag ``org_id``; confirm it to delete the message."""

    org_id: str
    message_id: str
    pop_receipt: str = field(repr=False)


_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def decode_org_id(content: str | bytes | None) -> str:
    """The org id in a message, whether the sender Base64-encoded it or not.

    Azure tools often Base64-encode queue messages; the reference sent plain text.  A
    message is taken as Base64 only when it decodes to a plausible org id, which plain
    org ids (they contain ``-``, not in the Base64 alphabet) essentially never do.
    """
    if content is None:
        return ""
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content)
    text = text.strip()
    try:
        decoded = base64.b64decode(text, validate=True).decode("ascii").strip()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return text
    return decoded if decoded and decoded != text and _ORG_ID.match(decoded) and decoded.isprintable() else text


class UnflagQueue:
    """The Azure storage queue of unflag requests (``settings.unflag_queue_name``).

    Read, act, then confirm: a message that is read but not confirmed becomes visible
    again after ``visibility_timeout_s`` and is read on a later run.

    :param connection_string: the storage account (needs a ``QueueEndpoint``); never shown.
    :param queue_name: e.g. ``publisher-black-flag-remove``.
    """

    def __init__(self, connection_string: str, queue_name: str, *, visibility_timeout_s: int = 300):
        from azure.storage.queue import QueueClient

        self.queue_name = queue_name
        self.visibility_timeout_s = visibility_timeout_s
        self._queue = QueueClient.from_connection_string(connection_string, queue_name)

    def __repr__(self) -> str:
        return f"UnflagQueue(queue_name={self.queue_name!r})"

    def read(self, max_messages: int = 256) -> list[UnflagRequest]:
        """Up to ``max_messages`` requests (empty messages are deleted and skipped)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        requests: list[UnflagRequest] = []
        try:
            for message in self._queue.receive_messages(
                messages_per_page=32, max_messages=max_messages, visibility_timeout=self.visibility_timeout_s
            ):
                org_id = decode_org_id(message.content)
                if not org_id:
                    log.warning("deleting an empty unflag request (message %s)", message.id)
                    self._queue.delete_message(message.id, message.pop_receipt)
                    continue
                requests.append(UnflagRequest(org_id, message.id, message.pop_receipt or ""))
        except ResourceNotFoundError:
            log.info("unflag queue %s does not exist: no requests", self.queue_name)
        except AzureError as exc:
            raise UnflagQueueError(f"cannot read unflag queue {self.queue_name}: {type(exc).__name__}") from exc
        return requests

    def confirm(self, requests: Iterable[UnflagRequest]) -> int:
        """Delete the messages of requests that were acted on; returns how many were deleted."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        deleted = 0
        for request in requests:
            try:
                self._queue.delete_message(request.message_id, request.pop_receipt)
                deleted += 1
            except ResourceNotFoundError:
                continue  # already gone (deleted by another reader, or the receipt expired)
            except AzureError as exc:
                raise UnflagQueueError(
                    f"cannot delete from unflag queue {self.queue_name}: {type(exc).__name__}"
                ) from exc
        return deleted

    def close(self) -> None:
        self._queue.close()


def unflag_queue_for(settings: Settings) -> UnflagQueue | None:
    """The unflag queue on the blob storage account, or None when off or storage is local."""
    if not settings.unflag_queue_name:
        return None
    from iati_refresher.storage import blob_config_for

    config = blob_config_for(settings)
    if config.backend != "azure" or not config.connection_string:
        return None
    return UnflagQueue(config.connection_string, settings.unflag_queue_name)
