"""Publisher safety check: flag messages, notification channels, the unflag queue."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from iati_refresher.connections import ConnectionInfo
from iati_refresher.db import repository
from iati_refresher.notify import (
    CommsHubClient,
    UnflagQueue,
    commshub_from_connection,
    decode_org_id,
    describe_period,
    flag_message,
    flag_reason,
)
from iati_refresher.settings import Settings
from iati_refresher.stages.safety import apply_unflag_requests, notify_flagged

SETTINGS = Settings(safety_check_threshold=100, safety_check_period_s=7200)
KEY = "commshub-secret-key"
PUBLISHERS = [
    {"org_id": "XM-EXAMPLE-1", "name": "example-one", "title": "Example One", "black_flag": datetime(2025, 3, 1, 12)},
    {"org_id": "XM-EXAMPLE-2", "name": "example-two", "title": "Example Two", "black_flag": None},
]


class CommsHubRecorder:
    """The Communications Hub's side of the wire: records posts, answers per org id."""

    def __init__(self, statuses: dict[str, int] | None = None, fail_for: set[str] | None = None):
        self.statuses = statuses or {}
        self.fail_for = fail_for or set()
        self.posts: list[tuple[httpx.Request, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(request.read())
        self.posts.append((request, payload))
        org_id = payload["data"]["publisherId"]
        if org_id in self.fail_for:
            raise httpx.ConnectError("unreachable")
        return httpx.Response(self.statuses.get(org_id, 200))

    def client(self) -> CommsHubClient:
        return CommsHubClient(
            "https://commshub.example/api/pvt/notification/slack", key=KEY, transport=httpx.MockTransport(self)
        )


# --- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(7200, "2 hours"), (3600, "1 hour"), (86400, "1 day"), (90, "90 seconds"), (600, "10 minutes")],
)
def test_describe_period(seconds: int, text: str) -> None:
    assert describe_period(seconds) == text


def test_flag_message_says_who_why_and_how_to_unflag() -> None:
    text = flag_message(PUBLISHERS[0], threshold=100, period_s=7200)

    for part in (
        "Example One",
        "example-one",
        "XM-EXAMPLE-1",
        "More than 100",
        "2 hours",
        "2025-03-01 12:00",
        "iati_unflag_publisher",
        '{"publisher": "example-one"}',
    ):
        assert part in text, part


def test_flag_reason_keeps_the_reference_wording_without_its_typo() -> None:
    assert flag_reason(100, 7200) == "Over 100 critical documents in the last 2 hours."


# --- notification -----------------------------------------------------------------------------


def test_commshub_receives_the_new_black_flag_event_with_the_key() -> None:
    hub = CommsHubRecorder()

    notified = notify_flagged(PUBLISHERS, None, hub.client(), settings=SETTINGS)

    assert notified == ["XM-EXAMPLE-1", "XM-EXAMPLE-2"]
    request, payload = hub.posts[0]
    assert str(request.url) == "https://commshub.example/api/pvt/notification/slack"
    assert request.headers["x-functions-key"] == KEY
    assert payload == {
        "type": "NEW_BLACK_FLAG",
        "data": {"publisherId": "XM-EXAMPLE-1", "reason": "Over 100 critical documents in the last 2 hours."},
    }


def test_only_publishers_told_on_every_channel_count_as_notified() -> None:
    slack: list[str] = []

    def send_slack(text: str) -> None:
        if "XM-EXAMPLE-2" in text:
            raise RuntimeError("slack webhook returned 500")
        slack.append(text)

    hub = CommsHubRecorder()
    notified = notify_flagged(PUBLISHERS, send_slack, hub.client(), settings=SETTINGS)

    assert notified == ["XM-EXAMPLE-1"]
    assert len(slack) == 1
    assert "XM-EXAMPLE-1" in slack[0]
    assert len(hub.posts) == 2  # the hub is still told; the publisher is retried as a whole next run


@pytest.mark.parametrize("trouble", ["status", "unreachable"])
def test_a_failed_commshub_call_leaves_the_publisher_for_next_run(trouble: str) -> None:
    hub = (
        CommsHubRecorder(statuses={"XM-EXAMPLE-1": 500})
        if trouble == "status"
        else CommsHubRecorder(fail_for={"XM-EXAMPLE-1"})
    )

    assert notify_flagged(PUBLISHERS, None, hub.client(), settings=SETTINGS) == ["XM-EXAMPLE-2"]


def test_without_channels_everyone_counts_as_notified() -> None:
    assert notify_flagged(PUBLISHERS, None, None, settings=SETTINGS) == ["XM-EXAMPLE-1", "XM-EXAMPLE-2"]


def test_commshub_client_from_connection_hides_its_key() -> None:
    conn = ConnectionInfo(
        conn_id="iati_commshub",
        conn_type="https",
        host="commshub.example",
        schema="api/pvt/notification/slack",
        password=KEY,
    )
    client = commshub_from_connection(conn, Settings())

    assert client.url == "https://commshub.example/api/pvt/notification/slack"
    assert KEY not in repr(client)


# --- unflag queue ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "org_id"),
    [
        ("XM-DAC-41114", "XM-DAC-41114"),
        ("  GB-GOV-1\n", "GB-GOV-1"),
        (base64.b64encode(b"GB-GOV-1").decode(), "GB-GOV-1"),
        ("ABCD", "ABCD"),  # valid Base64, but it decodes to bytes that are no org id
        ("", ""),
        (None, ""),
    ],
)
def test_org_id_is_read_from_plain_or_base64_messages(content: str | None, org_id: str) -> None:
    assert decode_org_id(content) == org_id


@pytest.fixture
def queue(azurite) -> Iterator[tuple[UnflagQueue, object]]:
    from azure.storage.queue import QueueClient

    name = f"unflag-{uuid.uuid4().hex[:10]}"
    sender = QueueClient.from_connection_string(azurite.connection_string, name)
    sender.create_queue()
    reader = UnflagQueue(azurite.connection_string, name)
    try:
        yield reader, sender
    finally:
        reader.close()
        sender.delete_queue()
        sender.close()


def queued(sender) -> int:
    return sender.get_queue_properties().approximate_message_count


def test_queue_requests_are_read_and_deleted_only_when_confirmed(queue) -> None:
    reader, sender = queue
    sender.send_message("XM-EXAMPLE-1")
    sender.send_message(base64.b64encode(b"XM-EXAMPLE-2").decode())
    sender.send_message("   ")

    requests = reader.read()

    assert sorted(r.org_id for r in requests) == ["XM-EXAMPLE-1", "XM-EXAMPLE-2"]
    assert queued(sender) == 2  # the empty message is gone, the others wait for confirmation
    assert reader.confirm([r for r in requests if r.org_id == "XM-EXAMPLE-1"]) == 1
    assert queued(sender) == 1


def test_a_missing_queue_has_no_requests(azurite) -> None:
    reader = UnflagQueue(azurite.connection_string, f"absent-{uuid.uuid4().hex[:10]}")
    try:
        assert reader.read() == []
    finally:
        reader.close()


def test_unflag_requests_unflag_publishers_in_the_database(queue, db) -> None:
    reader, sender = queue
    seen = datetime(2025, 3, 1)
    for org_id, name in [("XM-EXAMPLE-1", "example-one"), ("XM-EXAMPLE-2", "example-two")]:
        repository.upsert_publisher(db, {"org_id": org_id, "name": name, "title": name}, seen)
    db.execute("UPDATE publisher SET black_flag = %s, black_flag_notified = true", (seen,))
    sender.send_message("example-one")  # a short name works as well as an org id
    sender.send_message("XM-UNKNOWN-9")

    unflagged = apply_unflag_requests(reader, lambda who: repository.unflag_publisher(db, who))

    assert unflagged == ["XM-EXAMPLE-1"]
    flags = {r["org_id"]: r["black_flag"] for r in db.execute("SELECT org_id, black_flag FROM publisher")}
    assert flags == {"XM-EXAMPLE-1": None, "XM-EXAMPLE-2": seen}
    assert queued(sender) == 0  # both requests were handled


def test_a_request_that_could_not_be_applied_stays_queued(queue) -> None:
    reader, sender = queue
    sender.send_message("XM-EXAMPLE-1")
    sender.send_message("XM-EXAMPLE-2")

    def unflag(who: str) -> list[str]:
        if who == "XM-EXAMPLE-2":
            raise RuntimeError("database unavailable")
        return [who]

    assert apply_unflag_requests(reader, unflag) == ["XM-EXAMPLE-1"]
    assert queued(sender) == 1
