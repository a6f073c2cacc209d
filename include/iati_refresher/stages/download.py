"""Download stage: fetch a dataset's cached copy and store it as ``source/{hash}.xml``.

:func:`fetch_to_file` is the whole HTTP side (also behind ``refresher download URL OUTFILE``);
:func:`download_document` adds the document rules and the upload.

``download_error`` keeps the reference's meaning, because other IATI services show it:

====  ======================================================================================
0     connection error: refused/reset connection, DNS failure, body cut short, and timeouts
      (a timeout is our side giving up, not a status the server sent, so not 408)
1     TLS error (handshake or certificate)
2     the content cannot be read as text: no character encoding decodes it (binary), or a
      compressed body that does not decompress
3     unsupported URL: a scheme other than http/https, a malformed URL, or an address the
      refresher refuses to reach (loopback, private...): the message says which
4     no cached copy: the registry has no good copy of the dataset (empty hash or no URL)
413   the body is larger than ``settings.max_download_bytes`` (counted after decompression)
else  the HTTP status, e.g. 404 or 500 (a redirect loop records the last redirect's status)
====  ======================================================================================

Retryable (``Outcome.retryable``): connection errors, timeouts, TLS errors (certificates get
renewed), 5xx, 408, 429 and storage failures.  Not retryable: 2, 3, 4, 413, redirect loops
and every other 4xx; they wait for the document's hash to change or an operator re-run.

Unlike the reference, a failed download deletes nothing: blob names are content hashes
shared by identical datasets, so removing "this document's" blob could remove another's.
Stale and changed versions are removed by the sync.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from iati_refresher import net
from iati_refresher.iati.encoding import sniff_encoding
from iati_refresher.outcomes import Outcome
from iati_refresher.registry.base import SHA1_HEX
from iati_refresher.settings import Settings
from iati_refresher.storage import BlobStorageError, BlobStore

CONNECTION_ERROR = 0
TLS_ERROR = 1
CHARSET_UNDETECTABLE = 2
UNSUPPORTED_URL = 3
NO_CACHED_COPY = 4
TOO_LARGE = 413

RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class FetchResult:
    """What happened to one URL.

    :param url: the URL asked for.
    :param status: the final HTTP status, ``None`` when no response came.
    :param download_error: the reference's code (see the module docstring), ``None`` on success.
    :param code: a short machine reason: ``ok``, ``not_modified``, ``http_404``, ``timeout``,
        ``connection_error``, ``tls_error``, ``refused_address``, ``unsupported_scheme``,
        ``too_large``, ``charset_undetectable``, ...
    :param message: one line for people.
    :param bytes: size of the stored file (after decompression).
    :param sha1: SHA-1 hex of the stored bytes.
    :param encoding: the codec that decodes the file (see ``iati.encoding.sniff_encoding``).
    :param encoding_reason: how the encoding was decided.
    :param etag: the response's ETag (for the next conditional request).
    :param last_modified: the response's Last-Modified header.
    :param not_modified: the server answered 304 to our conditional request; nothing written.
    :param retryable: trying again later can help.
    :param final_url: the URL after redirects.
    """

    url: str
    status: int | None
    download_error: int | None
    code: str
    message: str
    bytes: int = 0
    sha1: str | None = None
    encoding: str | None = None
    encoding_reason: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False
    retryable: bool = False
    final_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.download_error is None and self.code in ("ok", "not_modified")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DownloadTooLarge(Exception):
    pass


class _DeadlinePassed(Exception):
    pass


def _failure(
    url: str, download_error: int, code: str, message: str, *, retryable: bool, status: int | None = None
) -> FetchResult:
    return FetchResult(url, status, download_error, code, message, retryable=retryable)


def _is_tls_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _classify(url: str, exc: BaseException) -> FetchResult:
    """The expected failures of a fetch as results; anything else is a bug and is re-raised."""
    if isinstance(exc, net.RefusedTarget):
        code = {"scheme": "unsupported_scheme", "address": "refused_address"}.get(exc.reason, "unsupported_url")
        return _failure(url, UNSUPPORTED_URL, code, str(exc), retryable=False)
    if isinstance(exc, net.RedirectLimitExceeded):
        return _failure(url, exc.status, "too_many_redirects", str(exc), retryable=False, status=exc.status)
    if isinstance(exc, _DownloadTooLarge):
        return _failure(url, TOO_LARGE, "too_large", str(exc), retryable=False)
    if isinstance(exc, net.UndecodableBody):
        return _failure(url, CHARSET_UNDETECTABLE, "undecodable_body", str(exc), retryable=False)
    if isinstance(exc, httpx.TimeoutException | _DeadlinePassed):
        return _failure(url, CONNECTION_ERROR, "timeout", f"timed out: {exc or type(exc).__name__}", retryable=True)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return _failure(url, UNSUPPORTED_URL, "unsupported_url", f"unsupported URL: {exc}", retryable=False)
    if isinstance(exc, httpx.TransportError):
        if _is_tls_error(exc):
            return _failure(url, TLS_ERROR, "tls_error", f"TLS error: {exc}", retryable=True)
        return _failure(
            url, CONNECTION_ERROR, "connection_error", f"connection error: {exc or type(exc).__name__}", retryable=True
        )
    raise exc


def _status_failure(url: str, response: httpx.Response) -> FetchResult:
    status = response.status_code
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    reason = response.reason_phrase or "error"
    return FetchResult(
        url,
        status,
        status,
        f"http_{status}",
        f"HTTP {status} {reason} from {response.url}",
        retryable=retryable,
        final_url=str(response.url),
    )


def _write_body(response: httpx.Response, dst: Path, settings: Settings, deadline: float) -> tuple[int, str]:
    """Stream the decoded body to ``dst``; (size, sha1).  Memory stays at one decoded piece."""
    limit = settings.max_download_bytes
    length = response.headers.get("content-length")
    if not response.headers.get("content-encoding") and length and length.isdigit() and int(length) > limit:
        raise _DownloadTooLarge(f"the file is {int(length)} bytes, over the {limit}-byte download limit")
    digest = hashlib.sha1()
    size = 0
    with open(dst, "wb") as out:
        for piece in net.ungzip_if_gzip(net.iter_decoded(response)):
            size += len(piece)
            if size > limit:
                raise _DownloadTooLarge(f"the file is over the {limit}-byte download limit (after decompression)")
            if time.monotonic() > deadline:
                raise _DeadlinePassed(f"the download took longer than {settings.download_timeout_s:g} s")
            digest.update(piece)
            out.write(piece)
    return size, digest.hexdigest()


def fetch_to_file(
    url: str,
    dst_path: str | os.PathLike[str],
    settings: Settings,
    *,
    client: httpx.Client | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
) -> FetchResult:
    """Download ``url`` to ``dst_path`` exactly as the download stage does.

    Redirects are followed with every hop checked (:mod:`iati_refresher.net`), the body is
    streamed to disk with gzip Content-Encoding and gzip files decompressed under the size
    cap, and the encoding is detected on the stored file.  ``dst_path`` exists afterwards
    only when a body was stored (``ok`` and not ``not_modified``).

    :param client: an HTTP client (:func:`iati_refresher.net.http_client`); one is made and
        closed when ``None``.
    :param etag: sent as ``If-None-Match``.
    :param last_modified: sent as ``If-Modified-Since``.
    """
    dst = Path(dst_path)
    own_client = client is None
    http = net.http_client(settings) if client is None else client
    headers = {"Accept-Encoding": net.ACCEPT_ENCODING}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    deadline = time.monotonic() + settings.download_timeout_s
    try:
        with net.open_stream(http, url, settings, headers=headers) as response:
            final_url = str(response.url)
            new_etag = response.headers.get("etag") or None
            new_last_modified = response.headers.get("last-modified") or None
            if response.status_code == 304 and (etag or last_modified):
                return FetchResult(
                    url,
                    304,
                    None,
                    "not_modified",
                    "not modified since the stored copy",
                    etag=new_etag or etag,
                    last_modified=new_last_modified or last_modified,
                    not_modified=True,
                    final_url=final_url,
                )
            if response.status_code != 200:
                return _status_failure(url, response)
            size, sha1 = _write_body(response, dst, settings, deadline)
    except Exception as exc:
        dst.unlink(missing_ok=True)
        return _classify(url, exc)
    finally:
        if own_client:
            http.close()
    info = sniff_encoding(dst, settings.charset_sample_bytes)
    if info.encoding is None:
        dst.unlink(missing_ok=True)
        return FetchResult(
            url,
            200,
            CHARSET_UNDETECTABLE,
            "charset_undetectable",
            f"cannot detect the character encoding: {info.reason}",
            bytes=size,
            sha1=sha1,
            final_url=final_url,
        )
    return FetchResult(
        url,
        200,
        None,
        "ok",
        f"downloaded {size} bytes ({info.encoding}; {info.reason})",
        bytes=size,
        sha1=sha1,
        encoding=info.encoding,
        encoding_reason=info.reason,
        etag=new_etag,
        last_modified=new_last_modified,
        final_url=final_url,
    )


def download_document(
    doc: dict[str, Any], blobs: BlobStore, settings: Settings, *, client: httpx.Client | None = None
) -> Outcome:
    """Download one document's cached copy to ``{settings.source_container}/{hash}.xml``.

    :param doc: ``id``, ``hash``, ``cached_dataset_url``, ``source_etag``,
        ``source_last_modified`` (``source_bytes`` and ``source_encoding`` are kept on a 304);
        other keys are ignored.
    :return: ``ok`` with data ``download_error`` (None), ``etag``, ``last_modified``,
        ``bytes``, ``encoding``, ``not_modified``, ``sha1``; ``skipped`` with
        ``download_error`` 4 when there is no cached copy; ``failed`` with the
        ``download_error`` otherwise (None for storage failures, which record nothing).
    """
    doc_id = str(doc["id"])
    hash_ = doc.get("hash") or ""
    url = doc.get("cached_dataset_url") or ""
    if not hash_ or not url:
        return Outcome.skipped(
            doc_id,
            "no_cached_copy",
            "the registry has no good copy of this dataset (no hash or no cached URL)",
            download_error=NO_CACHED_COPY,
        )
    if not SHA1_HEX.match(hash_):
        return Outcome.failed(
            doc_id,
            "invalid_hash",
            f"the document hash {hash_!r} is not a SHA-1",
            retryable=False,
            download_error=None,
        )
    container = settings.source_container
    blob_name = f"{hash_}.xml"
    etag = doc.get("source_etag") or None
    last_modified = doc.get("source_last_modified") or None
    try:
        # Ask "changed?" only when we still hold the copy the validators would reuse.
        have_copy = bool((etag or last_modified) and blobs.exists(container, blob_name))
    except BlobStorageError as exc:
        return _storage_failure(doc_id, exc)
    with tempfile.TemporaryDirectory(prefix="refresher-download-") as tmp:
        path = Path(tmp) / blob_name
        result = fetch_to_file(
            url,
            path,
            settings,
            client=client,
            etag=etag if have_copy else None,
            last_modified=last_modified if have_copy else None,
        )
        if result.not_modified:
            return Outcome.ok(
                doc_id,
                download_error=None,
                etag=result.etag,
                last_modified=result.last_modified,
                bytes=doc.get("source_bytes"),
                encoding=doc.get("source_encoding"),
                not_modified=True,
                sha1=None,
            )
        if not result.ok:
            return Outcome.failed(
                doc_id,
                result.code,
                result.message,
                retryable=result.retryable,
                download_error=result.download_error,
                status=result.status,
            )
        try:
            blobs.put_file(container, blob_name, path)
        except BlobStorageError as exc:
            return _storage_failure(doc_id, exc)
    return Outcome.ok(
        doc_id,
        download_error=None,
        etag=result.etag,
        last_modified=result.last_modified,
        bytes=result.bytes,
        encoding=result.encoding,
        not_modified=False,
        sha1=result.sha1,
    )


def _storage_failure(doc_id: str, exc: Exception) -> Outcome:
    return Outcome.failed(doc_id, "storage_error", f"blob storage failed: {exc}", retryable=True, download_error=None)
