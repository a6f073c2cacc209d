"""Publisher safety check: notify new black flags, act on unflag requests.

The flagging itself is one SQL statement (``repository.flag_publishers``); this module holds
the per-publisher logic around it, with the channels injected:

* :func:`notify_flagged` tells every configured channel about each newly flagged publisher
  and returns the ones told everywhere, so the caller marks them notified exactly once
  (a failed channel means "try again next run", as in the reference);
* :func:`apply_unflag_requests` unflags the publishers named in the unflag queue and
  deletes only the requests that were acted on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from iati_refresher.notify import UnflagRequest, flag_message, flag_reason
from iati_refresher.settings import Settings

log = logging.getLogger(__name__)


class CommsHub(Protocol):
    def notify_new_flag(self, org_id: str, reason: str) -> bool: ...


class UnflagRequests(Protocol):
    def read(self, max_messages: int = ...) -> list[UnflagRequest]: ...

    def confirm(self, requests: list[UnflagRequest]) -> int: ...


def notify_flagged(
    publishers: list[dict[str, Any]],
    send_slack: Callable[[str], None] | None,
    commshub: CommsHub | None,
    *,
    settings: Settings | None = None,
) -> list[str]:
    """Notify each flagged publisher on every configured channel.

    :param publishers: rows from ``repository.publishers_to_notify`` (``org_id``, ``name``,
        ``title``, ``black_flag``).
    :param send_slack: posts one message (raises on failure), or None when Slack is off.
    :param commshub: the Communications Hub client, or None when it is not configured.
    :param settings: threshold and period quoted in the messages (default from the environment).
    :return: org ids notified on every configured channel (all of them when no channel is
        configured: there is nobody to tell, and retrying forever would not change that).
    """
    settings = settings or Settings.from_env()
    threshold, period_s = settings.safety_check_threshold, settings.safety_check_period_s
    notified: list[str] = []
    for publisher in publishers:
        org_id = publisher["org_id"]
        delivered = True
        if send_slack is not None:
            try:
                send_slack(flag_message(publisher, threshold=threshold, period_s=period_s))
            except Exception as exc:  # any failure of the injected sender means "not told yet"
                log.warning("Slack notification for flagged publisher %s failed: %s", org_id, exc)
                delivered = False
        if commshub is not None and not commshub.notify_new_flag(org_id, flag_reason(threshold, period_s)):
            delivered = False
        if delivered:
            notified.append(org_id)
    return notified


def apply_unflag_requests(queue: UnflagRequests, unflag: Callable[[str], list[str]]) -> list[str]:
    """Unflag every publisher named in the queue; delete the requests that were handled.

    :param queue: an :class:`~iati_refresher.notify.UnflagQueue`.
    :param unflag: unflags one publisher by org id or name and returns the org ids changed
        (``repository.unflag_publisher`` bound to a connection).
    :return: org ids unflagged.  A request naming an unknown or unflagged publisher is
        handled (deleted) too; one whose ``unflag`` call raised stays queued for next time.
    """
    requests = queue.read()
    handled: list[UnflagRequest] = []
    unflagged: list[str] = []
    for request in requests:
        try:
            changed = unflag(request.org_id)
        except Exception as exc:  # e.g. the database is unavailable: keep the request for later
            log.warning("unflag request for %s not applied: %s", request.org_id, exc)
            continue
        if not changed:
            log.info("unflag request for %s: no flagged publisher by that id or name", request.org_id)
        unflagged.extend(changed)
        handled.append(request)
    if handled:
        queue.confirm(handled)
    return unflagged
