"""The download stage against the registry/publisher stand-in, with a local blob store."""

from __future__ import annotations

import gzip
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iati_refresher.outcomes import Outcome
from iati_refresher.settings import Settings
from iati_refresher.stages import download
from iati_refresher.stages.download import download_document, fetch_to_file
from iati_refresher.storage import BlobStorageError, LocalBlobStore
from tests.standins.registry_server import RegistryStandIn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry"
SETTINGS = Settings(
    allow_private_addresses=False,
    allowed_private_networks="127.0.0.1/32",
    http_timeout_s=5.0,
    user_agent="refresher-test/2",
)
HASH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: if a guard ever failed, no test may reach beyond this machine."""
    original = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"a test tried to connect to {address[0]}")
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture
def activity_xml() -> bytes:
    return (FIXTURES / "activities.xml").read_bytes()


@pytest.fixture
def server(activity_xml: bytes) -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as srv:
        srv.add_file("/files/activities.xml", activity_xml)
        srv.add_file("/files/cp1252.xml", (FIXTURES / "activities-cp1252.xml").read_bytes())
        srv.add_file("/files/binary.xml", bytes(range(256)) * 64, content_type="application/octet-stream")
        yield srv


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def doc_for(url: str | None, hash_: str = HASH, **extra: Any) -> dict[str, Any]:
    return {
        "id": "doc-1",
        "hash": hash_,
        "cached_dataset_url": url,
        "source_etag": None,
        "source_last_modified": None,
        **extra,
    }


def stored(blobs: LocalBlobStore, hash_: str = HASH) -> bytes | None:
    name = f"{hash_}.xml"
    return blobs.get_bytes("source", name) if blobs.exists("source", name) else None


# --- success ----------------------------------------------------------------------------------------------


def test_downloads_and_stores_the_raw_bytes_under_the_hash(
    server: RegistryStandIn, blobs: LocalBlobStore, activity_xml: bytes
) -> None:
    outcome = download_document(doc_for(f"{server.url}/files/activities.xml"), blobs, SETTINGS)
    assert outcome.status == "ok"
    assert stored(blobs) == activity_xml
    assert outcome.data["bytes"] == len(activity_xml)
    assert outcome.data["sha1"] == hashlib.sha1(activity_xml).hexdigest()
    assert outcome.data["encoding"] == "utf-8"
    assert outcome.data["download_error"] is None
    assert outcome.data["not_modified"] is False
    assert outcome.data["etag"] == server.files["/files/activities.xml"].etag
    assert outcome.data["last_modified"] is None  # the stand-in sent none for this file
    (request,) = server.requests
    assert request.headers["user-agent"] == "refresher-test/2"
    assert "if-none-match" not in request.headers


def test_windows_1252_bytes_are_stored_unchanged_and_their_codec_recorded(
    server: RegistryStandIn, blobs: LocalBlobStore
) -> None:
    outcome = download_document(doc_for(f"{server.url}/files/cp1252.xml"), blobs, SETTINGS)
    assert outcome.status == "ok"
    assert outcome.data["encoding"] == "cp1252"
    assert stored(blobs) == (FIXTURES / "activities-cp1252.xml").read_bytes()


@pytest.mark.parametrize("route", ["gzip-encoded", "gzip-body"])
def test_gzip_is_decompressed_before_storing(
    server: RegistryStandIn, blobs: LocalBlobStore, activity_xml: bytes, route: str
) -> None:
    outcome = download_document(doc_for(f"{server.url}/{route}/files/activities.xml"), blobs, SETTINGS)
    assert outcome.status == "ok"
    assert stored(blobs) == activity_xml
    assert outcome.data["bytes"] == len(activity_xml)


def test_redirect_to_another_server_is_followed(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    with RegistryStandIn() as other:
        target = other.add_file("/moved.xml", b"<iati-activities version='2.03'/>")
        outcome = download_document(doc_for(f"{server.url}/redirect?to={target}&status=301"), blobs, SETTINGS)
        assert outcome.status == "ok"
        assert stored(blobs) == b"<iati-activities version='2.03'/>"
        assert len(other.requests) == 1


def test_an_html_error_page_with_status_200_is_stored_for_validation_to_judge(
    server: RegistryStandIn, blobs: LocalBlobStore
) -> None:
    outcome = download_document(doc_for(f"{server.url}/html-200"), blobs, SETTINGS)
    assert outcome.status == "ok"
    assert stored(blobs).startswith(b"<!DOCTYPE html>")


# --- the reference's error codes ------------------------------------------------------------------------


@pytest.mark.parametrize(("hash_", "url"), [("", "http://127.0.0.1:9/a.xml"), (HASH, None), (HASH, "")])
def test_no_cached_copy_is_skipped_with_error_4(
    server: RegistryStandIn, blobs: LocalBlobStore, hash_: str, url: str | None
) -> None:
    outcome = download_document(doc_for(url, hash_=hash_), blobs, SETTINGS)
    assert outcome.status == "skipped"
    assert outcome.code == "no_cached_copy"
    assert outcome.data["download_error"] == 4
    assert server.requests == []


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(404, False), (410, False), (403, False), (500, True), (503, True), (429, True), (408, True)],
)
def test_http_errors_record_the_status(
    server: RegistryStandIn, blobs: LocalBlobStore, status: int, retryable: bool
) -> None:
    outcome = download_document(doc_for(f"{server.url}/status/{status}"), blobs, SETTINGS)
    assert outcome.status == "failed"
    assert outcome.code == f"http_{status}"
    assert outcome.data["download_error"] == status
    assert outcome.retryable is retryable
    assert stored(blobs) is None


def test_connection_refused_is_error_0_and_retryable(blobs: LocalBlobStore) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = download_document(doc_for(f"http://127.0.0.1:{port}/a.xml"), blobs, SETTINGS)
    assert (outcome.status, outcome.code, outcome.data["download_error"], outcome.retryable) == (
        "failed",
        "connection_error",
        0,
        True,
    )


def test_tls_failure_is_error_1(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    # https to a plain-HTTP server: the TLS handshake fails.
    outcome = download_document(doc_for(f"https://127.0.0.1:{server.port}/files/activities.xml"), blobs, SETTINGS)
    assert (outcome.code, outcome.data["download_error"]) == ("tls_error", 1)
    assert outcome.retryable is True


def test_binary_content_is_error_2(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    outcome = download_document(doc_for(f"{server.url}/files/binary.xml"), blobs, SETTINGS)
    assert (outcome.status, outcome.code, outcome.data["download_error"]) == ("failed", "charset_undetectable", 2)
    assert outcome.retryable is False
    assert stored(blobs) is None


def test_corrupt_gzip_body_is_error_2(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    server.add_file("/files/broken.xml.gz", gzip.compress(b"<iati-activities/>" * 50)[:40])
    outcome = download_document(doc_for(f"{server.url}/files/broken.xml.gz"), blobs, SETTINGS)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == ("undecodable_body", 2, False)


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("ftp://files.example.org/a.xml", "unsupported_scheme", "scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported_scheme", "scheme 'file'"),
        ("http://10.255.255.1/a.xml", "refused_address", "refused address"),
        ("http://[::ffff:127.0.0.2]/a.xml", "refused_address", "refused address"),
    ],
)
def test_unsupported_or_refused_urls_are_error_3(blobs: LocalBlobStore, url: str, code: str, words: str) -> None:
    outcome = download_document(doc_for(url), blobs, SETTINGS)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == (code, 3, False)
    assert words in outcome.message


def test_a_host_name_resolving_to_loopback_is_refused(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    settings = SETTINGS.replace(allowed_private_networks="")
    outcome = download_document(doc_for(f"http://localhost:{server.port}/files/activities.xml"), blobs, settings)
    assert (outcome.code, outcome.data["download_error"]) == ("refused_address", 3)
    assert server.requests == []


def test_redirect_to_a_private_address_is_refused(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    outcome = download_document(doc_for(f"{server.url}/redirect?to=http://192.168.77.1/a.xml"), blobs, SETTINGS)
    assert (outcome.code, outcome.data["download_error"]) == ("refused_address", 3)
    assert "192.168.77.1" in outcome.message


def test_a_redirect_loop_records_the_redirect_status(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    outcome = download_document(doc_for(f"{server.url}/redirect-loop"), blobs, SETTINGS)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == ("too_many_redirects", 302, False)


def test_slow_server_times_out_as_error_0(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    settings = SETTINGS.replace(http_timeout_s=0.2)
    outcome = download_document(doc_for(f"{server.url}/slow/3/files/activities.xml"), blobs, settings)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == ("timeout", 0, True)


def test_a_stall_mid_body_times_out_and_stores_nothing(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    settings = SETTINGS.replace(http_timeout_s=0.2)
    outcome = download_document(doc_for(f"{server.url}/stall/files/activities.xml"), blobs, settings)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == ("timeout", 0, True)
    assert stored(blobs) is None


def test_the_total_download_deadline_applies_to_a_trickling_body(
    server: RegistryStandIn, blobs: LocalBlobStore
) -> None:
    server.stall_s = 0.3  # each read is within the read timeout, the whole is not within the deadline
    settings = SETTINGS.replace(download_timeout_s=0.1)
    outcome = download_document(doc_for(f"{server.url}/stall/files/activities.xml"), blobs, settings)
    assert (outcome.code, outcome.data["download_error"]) == ("timeout", 0)
    assert "longer than" in outcome.message


@pytest.mark.parametrize("route", ["oversize/300000", "oversize/300000?gzip=1"])
def test_an_oversized_body_is_413_and_not_retried(server: RegistryStandIn, blobs: LocalBlobStore, route: str) -> None:
    settings = SETTINGS.replace(max_download_bytes=100_000)
    outcome = download_document(doc_for(f"{server.url}/{route}"), blobs, settings)
    assert (outcome.code, outcome.data["download_error"], outcome.retryable) == ("too_large", 413, False)
    assert "100000-byte" in outcome.message
    assert stored(blobs) is None


def test_content_length_over_the_limit_is_refused_before_reading(
    server: RegistryStandIn, blobs: LocalBlobStore, activity_xml: bytes
) -> None:
    settings = SETTINGS.replace(max_download_bytes=len(activity_xml) - 1)
    outcome = download_document(doc_for(f"{server.url}/files/activities.xml"), blobs, settings)
    assert outcome.data["download_error"] == 413
    assert f"is {len(activity_xml)} bytes" in outcome.message


def test_a_malformed_hash_is_never_used_as_a_blob_name(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    outcome = download_document(doc_for(f"{server.url}/files/activities.xml", hash_="../../etc/x"), blobs, SETTINGS)
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "invalid_hash", False)
    assert server.requests == []


# --- storage and conditional re-fetch -----------------------------------------------------------------


class CountingStore(LocalBlobStore):
    def __init__(self, root: Path, *, fail: bool = False):
        super().__init__(root)
        self.puts = 0
        self.fail = fail

    def put_file(self, container: str, name: str, path: Any) -> None:
        if self.fail:
            raise BlobStorageError(f"{container}/{name}: service unavailable")
        self.puts += 1
        super().put_file(container, name, path)


def test_storage_failure_is_retryable_and_records_no_download_error(server: RegistryStandIn, tmp_path: Path) -> None:
    outcome = download_document(
        doc_for(f"{server.url}/files/activities.xml"), CountingStore(tmp_path, fail=True), SETTINGS
    )
    assert (outcome.status, outcome.code, outcome.retryable) == ("failed", "storage_error", True)
    assert outcome.data["download_error"] is None


def test_unchanged_source_is_not_downloaded_or_uploaded_again(server: RegistryStandIn, tmp_path: Path) -> None:
    blobs = CountingStore(tmp_path)
    url = f"{server.url}/files/activities.xml"
    first = download_document(doc_for(url), blobs, SETTINGS)
    assert blobs.puts == 1
    again = download_document(
        doc_for(
            url,
            source_etag=first.data["etag"],
            source_last_modified="Tue, 01 Oct 2024 10:00:00 GMT",
            source_bytes=first.data["bytes"],
            source_encoding="utf-8",
        ),
        blobs,
        SETTINGS,
    )
    assert again.status == "ok"
    assert again.data["not_modified"] is True
    assert again.data["bytes"] == first.data["bytes"]
    assert again.data["etag"] == first.data["etag"]
    assert blobs.puts == 1
    conditional = server.requests[-1]
    assert conditional.headers["if-none-match"] == first.data["etag"]
    assert conditional.headers["if-modified-since"] == "Tue, 01 Oct 2024 10:00:00 GMT"


def test_a_changed_source_is_downloaded_despite_the_stored_etag(server: RegistryStandIn, tmp_path: Path) -> None:
    blobs = CountingStore(tmp_path)
    url = f"{server.url}/files/activities.xml"
    download_document(doc_for(url), blobs, SETTINGS)
    outcome = download_document(doc_for(url, source_etag='"an-older-version"'), blobs, SETTINGS)
    assert outcome.data["not_modified"] is False
    assert blobs.puts == 2


def test_no_conditional_request_when_the_blob_is_gone(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    url = f"{server.url}/files/activities.xml"
    first = download_document(doc_for(url), blobs, SETTINGS)
    blobs.delete("source", [f"{HASH}.xml"])
    again = download_document(doc_for(url, source_etag=first.data["etag"]), blobs, SETTINGS)
    assert again.data["not_modified"] is False
    assert stored(blobs) is not None
    assert "if-none-match" not in server.requests[-1].headers


# --- fetch_to_file (the CLI's entry point) ---------------------------------------------------------------


def test_fetch_to_file_reports_and_leaves_no_partial_file(server: RegistryStandIn, tmp_path: Path) -> None:
    good = tmp_path / "good.xml"
    result = fetch_to_file(f"{server.url}/files/activities.xml", good, SETTINGS)
    assert result.ok
    assert good.read_bytes() == (FIXTURES / "activities.xml").read_bytes()
    assert result.to_dict()["encoding"] == "utf-8"

    partial = tmp_path / "partial.xml"
    result = fetch_to_file(f"{server.url}/oversize/300000", partial, SETTINGS.replace(max_download_bytes=100_000))
    assert not result.ok
    assert result.download_error == 413
    assert not partial.exists()


def test_unexpected_errors_are_not_swallowed(server: RegistryStandIn, tmp_path: Path) -> None:
    # Writing into a directory that does not exist is a bug in the caller, not a document problem.
    with pytest.raises(OSError):
        fetch_to_file(f"{server.url}/files/activities.xml", tmp_path / "missing" / "x.xml", SETTINGS)


def test_outcome_round_trips_for_the_recorder(server: RegistryStandIn, blobs: LocalBlobStore) -> None:
    outcome = download_document(doc_for(f"{server.url}/status/404"), blobs, SETTINGS)
    assert Outcome.from_dict(outcome.to_dict()) == outcome
    assert download.TOO_LARGE == 413
