"""A registry and publisher stand-in on loopback, driven by the test.

It extends the sample Bulk Data Service (:class:`iati_refresher.sample.server.SampleRegistryServer`)
with content the test sets (indices built from Python data, files as bytes) and routes for
the failures a real registry or publisher produces:

====================================  ==================================================================
``/status/<code>``                    that HTTP status (404, 500, 429...)
``/slow/<seconds>/<path>``            waits before answering, then serves the file at ``/<path>``
``/stall/<path>``                     sends half of the file, stalls ``stall_s``, then the rest
``/redirect?to=<url>[&status=302]``   redirects anywhere (another host/port, a private address)
``/redirect-loop``                    redirects to itself forever
``/oversize/<bytes>[?gzip=1]``        an XML-ish body of that many bytes (optionally gzip-encoded)
``/gzip-encoded/<path>``              the file with ``Content-Encoding: gzip``
``/gzip-body/<path>``                 the file gzip-compressed as the body itself
``/html-200``                         an HTML error page with status 200
``/api/3/action/...``                 CKAN: ``package_search``, ``organization_list``, ``organization_show``
====================================  ==================================================================

Every request is logged with its headers (``server.requests``), to assert the User-Agent,
conditional headers and request pacing.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from iati_refresher.sample.server import (
    DATASET_INDEX_PATH,
    REPORTING_ORG_INDEX_PATH,
    RecordedRequest,
    Reply,
    SampleRegistryServer,
    hash_excluding_generated_timestamp,
)

INDEX_CREATED = 1_728_570_515
HTML_ERROR_PAGE = b"""<!DOCTYPE html>
<html><head><title>Service unavailable</title></head>
<body><h1>Sorry, something went wrong</h1><p>Please try again later.</p></body></html>
"""


def bds_org(org_id: str, short_name: str, title: str | None = None, iati_id: str | None = None) -> dict[str, Any]:
    """A reporting-org index entry."""
    return {
        "id": org_id,
        "short_name": short_name,
        "human_readable_name": title if title is not None else short_name.replace("-", " ").title(),
        "iati_identifier": iati_id if iati_id is not None else short_name.upper(),
    }


def bds_dataset(
    dataset_id: str,
    short_name: str,
    org_id: str,
    *,
    cached_url: str | None,
    hash_: str | None,
    source_url: str | None = None,
    newer_names: bool = False,
) -> dict[str, Any]:
    """A minimal dataset index entry; ``hash_``/``cached_url`` ``None`` means "no good copy".

    :param newer_names: use the newer BDS key ``cached_dataset_xml_url`` only.
    """
    good: dict[str, Any] = {
        "downloaded": "2024-10-10 04:34:04+00:00" if hash_ else None,
        "verified_on_server": "2024-10-10 04:34:04+00:00" if hash_ else None,
        "hash": hash_,
        "hash_excluding_generated_timestamp": hash_,
        "cached_dataset_url_zip": None,
    }
    if newer_names:
        good["cached_dataset_xml_url"] = cached_url
    else:
        good["cached_dataset_url_xml"] = cached_url
    return {
        "id": dataset_id,
        "short_name": short_name,
        "reporting_org_id": org_id,
        "reporting_org_short_name": short_name.split("-")[0],
        "source_url": source_url if source_url is not None else f"https://publisher.example.org/{short_name}.xml",
        "license_id": "cc-by",
        "last_update_check": "2024-10-10 04:34:04+00:00",
        "last_known_good_dataset": good,
    }


def ckan_package(package_id: str, name: str, owner_org: str, *, url: str, hash_: str = "") -> dict[str, Any]:
    """A CKAN package as ckanext-iati returns it (one resource)."""
    return {
        "id": package_id,
        "name": name,
        "owner_org": owner_org,
        "state": "active",
        "resources": [{"package_id": package_id, "hash": hash_, "url": url, "format": "IATI-XML"}],
        "extras": [{"key": "filetype", "value": "activity"}, {"key": "iati_version", "value": "2.03"}],
    }


def ckan_organisation(org_id: str, name: str, title: str, *, iati_id: str = "", country: str = "") -> dict[str, Any]:
    """A CKAN organisation as ckanext-iati returns it."""
    return {
        "id": org_id,
        "name": name,
        "title": title,
        "state": "active",
        "image_url": "",
        "publisher_iati_id": iati_id,
        "publisher_country": country,
        "publisher_description": f"{title} publishes IATI data.",
        "package_count": 0,
    }


class RegistryStandIn(SampleRegistryServer):
    """A test-driven registry/publisher server (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port, load_sample=False)
        self.stall_s = 30.0
        self.truncate_dataset_index = False
        # CKAN behaviour
        self.ckan_packages: list[dict[str, Any]] = []
        self.ckan_organisations: list[dict[str, Any]] = []
        self.ckan_count: int | None = None  # announce this count instead of the real one
        self.ckan_ignore_start = False  # always answer the first page (a broken pager)
        self.ckan_all_fields = "supported"  # or "ignored" (names only) or "error"
        self.ckan_all_fields_max = 25  # CKAN's default cap for all_fields listings

    # --- content set by tests -------------------------------------------------------------------

    def set_bds(
        self,
        publishers: list[dict[str, Any]],
        datasets: list[dict[str, Any]],
        *,
        index_created: int = INDEX_CREATED,
        reporting_orgs_created: int | None = None,
        keyed_by_name: bool = False,
    ) -> None:
        """Serve these entries as the two BDS indices.

        :param reporting_orgs_created: a different run's timestamp for the reporting-org index.
        :param keyed_by_name: the older BDS shape (datasets as a dict keyed by short name).
        """
        listed: Any = {d.get("short_name", str(i)): d for i, d in enumerate(datasets)} if keyed_by_name else datasets
        self.dataset_index = {
            "index_created": "2024-10-10 14:28:35+00:00",
            "index_created_unix_timestamp": index_created,
            "datasets": listed,
        }
        self.reporting_org_index = {
            "index_created": "2024-10-10 14:28:35+00:00",
            "index_created_unix_timestamp": index_created if reporting_orgs_created is None else reporting_orgs_created,
            "reporting_orgs": publishers,
        }

    def add_dataset_file(self, name: str, data: bytes) -> tuple[str, str]:
        """Serve ``data`` as ``/files/<name>``; returns (URL, BDS hash)."""
        url = self.add_file(f"/files/{name}", data)
        return url, hash_excluding_generated_timestamp(data)

    # --- routes ------------------------------------------------------------------------------------

    def _file(self, path: str) -> Reply:
        reply = self.files.get("/" + path.lstrip("/"))
        if reply is None:
            return Reply.text(404, "no such file")
        return reply

    def handle(self, request: RecordedRequest) -> Reply:
        path = request.path
        head, _, rest = path.lstrip("/").partition("/")
        if path.startswith("/api/3/action/"):
            return self._ckan(path.rsplit("/", 1)[-1], request)
        if path == DATASET_INDEX_PATH and self.truncate_dataset_index:
            body = Reply.of_json(self.dataset_index).body
            assert isinstance(body, bytes)
            return Reply(200, body[: len(body) // 2], {"Content-Type": "application/json"})
        if head == "status":
            return Reply.text(int(rest), f"status {rest}")
        if head == "slow":
            seconds, _, file_path = rest.partition("/")
            if self.pause(float(seconds)):
                return Reply.text(503, "stopping")
            return self._file(file_path)
        if head == "stall":
            data = self._file(rest).body
            assert isinstance(data, bytes)
            half = len(data) // 2
            return Reply(200, [data[:half], self.stall_s, data[half:]], {"Content-Length": str(len(data))})
        if head == "redirect":
            status = int(request.param("status", "302") or 302)
            return Reply(status, b"", {"Location": request.param("to") or "/"})
        if head == "redirect-loop":
            return Reply(302, b"", {"Location": "/redirect-loop"})
        if head == "oversize":
            return self._oversize(int(rest), gzip_encoded=request.param("gzip") == "1")
        if head == "gzip-encoded":
            data = self._file(rest).body
            assert isinstance(data, bytes)
            return Reply(200, gzip.compress(data), {"Content-Type": "application/xml", "Content-Encoding": "gzip"})
        if head == "gzip-body":
            data = self._file(rest).body
            assert isinstance(data, bytes)
            return Reply(200, gzip.compress(data), {"Content-Type": "application/gzip"})
        if head == "html-200":
            return Reply(200, HTML_ERROR_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        return super().handle(request)

    def _oversize(self, size: int, *, gzip_encoded: bool) -> Reply:
        opening = b'<?xml version="1.0"?>\n<iati-activities version="2.03">\n'
        filler = b"<!-- padding -->\n" * 4096
        data = bytearray(opening)
        while len(data) < size:
            data += filler
        body = bytes(data[:size])
        if gzip_encoded:
            return Reply(200, gzip.compress(body), {"Content-Type": "application/xml", "Content-Encoding": "gzip"})
        # Streamed without Content-Length: the client can only find out by counting.
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        return Reply(200, chunks, {"Content-Type": "application/xml"})

    # --- CKAN ----------------------------------------------------------------------------------------

    @staticmethod
    def _ckan_ok(result: Any) -> Reply:
        return Reply.of_json({"help": "stand-in", "success": True, "result": result}, etag=False)

    @staticmethod
    def _ckan_error(status: int, message: str) -> Reply:
        body = {"help": "stand-in", "success": False, "error": {"message": message, "__type": "Error"}}
        return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _ckan(self, action: str, request: RecordedRequest) -> Reply:
        if action == "package_search":
            rows = int(request.param("rows", "10") or 10)
            start = 0 if self.ckan_ignore_start else int(request.param("start", "0") or 0)
            count = self.ckan_count if self.ckan_count is not None else len(self.ckan_packages)
            return self._ckan_ok({"count": count, "results": self.ckan_packages[start : start + rows]})
        if action == "organization_list":
            limit = int(request.param("limit", "1000") or 1000)
            offset = int(request.param("offset", "0") or 0)
            all_fields = request.param("all_fields", "false") == "true"
            if all_fields and self.ckan_all_fields == "error":
                return self._ckan_error(409, "all_fields is not supported here")
            if all_fields and self.ckan_all_fields == "supported":
                page = self.ckan_organisations[offset : offset + min(limit, self.ckan_all_fields_max)]
                return self._ckan_ok(page)
            names = [org["name"] for org in self.ckan_organisations]
            return self._ckan_ok(names[offset : offset + limit])
        if action == "organization_show":
            name = request.param("id")
            for org in self.ckan_organisations:
                if name in (org["name"], org["id"]):
                    return self._ckan_ok(org)
            return self._ckan_error(404, "Not found")
        return self._ckan_error(400, f"unknown action {action}")


__all__ = [
    "DATASET_INDEX_PATH",
    "REPORTING_ORG_INDEX_PATH",
    "RegistryStandIn",
    "bds_dataset",
    "bds_org",
    "ckan_organisation",
    "ckan_package",
]
