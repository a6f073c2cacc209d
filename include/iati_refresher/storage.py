"""Blob storage with two backends: Azure Blob Storage and a local directory.

Stages talk to a :class:`BlobStore`; they never know which backend they have.  Files
move by streaming (a local temporary file on one side), so memory stays flat whatever
the blob size.  Writes are atomic: a reader sees the old blob or the new one, never half.

Containers: ``source/{hash}.xml`` (raw downloads), ``clean/{hash}.xml`` (valid activities
only), ``lake/{document_id}/{sha1(identifier)}.xml|json`` and ``flat/{document_id}/{hash}.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from iati_refresher.connections import BLOB_STORAGE, ConnectionInfo, get_connection
from iati_refresher.settings import Settings

DELETE_CHUNK = 250  # Azure's batch delete takes at most 256 blobs


class BlobNotFound(LookupError):
    """The blob does not exist."""


class BlobStorageError(RuntimeError):
    """The storage service failed (network, service error); worth retrying later."""


@dataclass(frozen=True)
class BlobStoreConfig:
    """Everything needed to open a store in any process (picklable; holds secrets: never log)."""

    backend: str = "local"  # "local" or "azure"
    local_dir: str = ""
    connection_string: str = field(default="", repr=False)
    retry_total: int = 3  # retries of one Azure request (see ``Settings.blob_retry_total``)
    retry_backoff_s: int = 2

    def describe(self) -> str:
        if self.backend == "local":
            return f"local directory {self.local_dir}"
        endpoint = next(
            (p.split("=", 1)[1] for p in self.connection_string.split(";") if p.startswith("BlobEndpoint=")),
            "Azure Blob Storage",
        )
        return f"azure blob storage at {endpoint}"


class BlobStore(Protocol):
    def ensure_containers(self, containers: Iterable[str]) -> None: ...
    def put_file(self, container: str, name: str, path: str | os.PathLike[str]) -> None: ...
    def put_bytes(self, container: str, name: str, data: bytes) -> None: ...
    def get_to_file(self, container: str, name: str, path: str | os.PathLike[str]) -> int: ...
    def get_bytes(self, container: str, name: str) -> bytes: ...
    def exists(self, container: str, name: str) -> bool: ...
    def delete(self, container: str, names: Iterable[str]) -> int: ...
    def delete_prefix(self, container: str, prefix: str) -> int: ...
    def list(self, container: str, prefix: str = "") -> Iterator[str]: ...
    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None: ...


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"unsafe blob name: {name!r}")
    return name


class LocalBlobStore:
    """Blobs as files under ``root/<container>/<name>`` (the embedded default)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._dirs: set[Path] = set()

    def _path(self, container: str, name: str) -> Path:
        return self.root / _check_name(container) / _check_name(name)

    def ensure_containers(self, containers: Iterable[str]) -> None:
        for c in containers:
            (self.root / _check_name(c)).mkdir(parents=True, exist_ok=True)

    def _temporary(self, target: Path) -> Path:
        """A private temporary name next to ``target`` (so ``os.replace`` is atomic)."""
        parent = target.parent
        if parent not in self._dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        return parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}"

    def put_file(self, container: str, name: str, path: str | os.PathLike[str]) -> None:
        target = self._path(container, name)
        tmp = self._temporary(target)
        with open(tmp, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, target)

    def put_bytes(self, container: str, name: str, data: bytes) -> None:
        target = self._path(container, name)
        tmp = self._temporary(target)
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, target)

    def get_to_file(self, container: str, name: str, path: str | os.PathLike[str]) -> int:
        source = self._path(container, name)
        try:
            with open(source, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                return dst.tell()
        except FileNotFoundError as exc:
            raise BlobNotFound(f"{container}/{name}") from exc

    def get_bytes(self, container: str, name: str) -> bytes:
        try:
            return self._path(container, name).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(f"{container}/{name}") from exc

    def exists(self, container: str, name: str) -> bool:
        return self._path(container, name).is_file()

    def delete(self, container: str, names: Iterable[str]) -> int:
        deleted = 0
        for name in names:
            try:
                self._path(container, name).unlink()
                deleted += 1
            except FileNotFoundError:
                pass
        return deleted

    def delete_prefix(self, container: str, prefix: str) -> int:
        return self.delete(container, list(self.list(container, prefix)))

    def list(self, container: str, prefix: str = "") -> Iterator[str]:
        base = self.root / _check_name(container)
        # Names are paths: only the prefix's directory part can hold matches, so walk that
        # alone (one dataset's lake folder, not every activity of every dataset).
        folder = prefix.rpartition("/")[0]
        start = base / _check_name(folder) if folder else base
        if not start.is_dir():
            return
        for dirpath, _dirs, files in os.walk(start):
            for f in files:
                if f.startswith(".tmp-"):
                    continue
                rel = (Path(dirpath) / f).relative_to(base).as_posix()
                if rel.startswith(prefix):
                    yield rel

    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None:
        source = self._path(src_container, src_name)
        if not source.is_file():
            raise BlobNotFound(f"{src_container}/{src_name}")
        self.put_file(dst_container, dst_name, source)


class AzureBlobStore:
    """Azure Blob Storage (or Azurite) through azure-storage-blob."""

    def __init__(
        self, connection_string: str, *, timeout_s: float = 300.0, retry_total: int = 3, retry_backoff_s: int = 2
    ):
        from azure.storage.blob import BlobServiceClient, LinearRetry

        # A few quick retries: the SDK default (waits of 15 s and more) holds every blob
        # request for about 90 s while storage is down, and a batch of documents for an hour.
        # Longer outages are the stage retries' business (minutes apart, capped).
        retry = LinearRetry(
            backoff=retry_backoff_s, retry_total=retry_total, random_jitter_range=min(1, retry_backoff_s)
        )
        self._service = BlobServiceClient.from_connection_string(
            connection_string, connection_timeout=20, read_timeout=timeout_s, retry_policy=retry
        )

    def _blob(self, container: str, name: str):
        return self._service.get_blob_client(container, _check_name(name))

    @staticmethod
    def _wrap(exc: Exception, what: str) -> Exception:
        from azure.core.exceptions import ResourceNotFoundError

        if isinstance(exc, ResourceNotFoundError):
            return BlobNotFound(what)
        return BlobStorageError(f"{what}: {type(exc).__name__}: {exc}")

    def ensure_containers(self, containers: Iterable[str]) -> None:
        from azure.core.exceptions import ResourceExistsError

        for c in containers:
            with contextlib.suppress(ResourceExistsError):
                self._service.create_container(c)

    def put_file(self, container: str, name: str, path: str | os.PathLike[str]) -> None:
        try:
            with open(path, "rb") as f:
                self._blob(container, name).upload_blob(f, overwrite=True, max_concurrency=2)
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{name}") from exc

    def put_bytes(self, container: str, name: str, data: bytes) -> None:
        try:
            self._blob(container, name).upload_blob(data, overwrite=True)
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{name}") from exc

    def get_to_file(self, container: str, name: str, path: str | os.PathLike[str]) -> int:
        try:
            with open(path, "wb") as f:
                return self._blob(container, name).download_blob(max_concurrency=2).readinto(f)
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{name}") from exc

    def get_bytes(self, container: str, name: str) -> bytes:
        try:
            return self._blob(container, name).download_blob().readall()
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{name}") from exc

    def exists(self, container: str, name: str) -> bool:
        try:
            return bool(self._blob(container, name).exists())
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{name}") from exc

    def delete(self, container: str, names: Iterable[str]) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        client = self._service.get_container_client(container)
        deleted = 0
        for name in names:
            try:
                client.delete_blob(_check_name(name))
                deleted += 1
            except ResourceNotFoundError:
                pass
            except Exception as exc:
                raise self._wrap(exc, f"{container}/{name}") from exc
        return deleted

    def delete_prefix(self, container: str, prefix: str) -> int:
        return self.delete(container, list(self.list(container, prefix)))

    def list(self, container: str, prefix: str = "") -> Iterator[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            for blob in self._service.get_container_client(container).list_blobs(
                name_starts_with=prefix or None
            ):
                yield blob.name
        except ResourceNotFoundError:
            return
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{prefix}*") from exc

    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None:
        # Stream through a local temporary file: a server-side copy is asynchronous and
        # the reference raced on it (a clean file read before the copy had finished).
        with tempfile.NamedTemporaryFile(prefix="blob-copy-") as tmp:
            self.get_to_file(src_container, src_name, tmp.name)
            self.put_file(dst_container, dst_name, tmp.name)


def open_blob_store(config: BlobStoreConfig) -> BlobStore:
    if config.backend == "azure":
        return AzureBlobStore(
            config.connection_string, retry_total=config.retry_total, retry_backoff_s=config.retry_backoff_s
        )
    if config.backend == "local":
        return LocalBlobStore(config.local_dir)
    raise ValueError(f"unknown blob backend {config.backend!r}")


def blob_config_from(conn: ConnectionInfo | None, settings: Settings) -> BlobStoreConfig:
    if conn is None:
        return BlobStoreConfig(backend="local", local_dir=settings.local_blob_dir)
    connection_string = conn.extra.get("connection_string") or conn.extra.get(
        "extra__wasb__connection_string", ""
    )
    if not connection_string and conn.login and conn.password:
        endpoint = conn.host if "://" in conn.host else f"https://{conn.login}.blob.core.windows.net"
        connection_string = (
            f"DefaultEndpointsProtocol={endpoint.split('://', 1)[0]};AccountName={conn.login};"
            f"AccountKey={conn.password};BlobEndpoint={endpoint};"
        )
    if not connection_string:
        raise ValueError(
            f"connection {conn.conn_id!r} needs a connection_string extra or login/password/host"
        )
    return BlobStoreConfig(
        backend="azure", connection_string=connection_string,
        retry_total=settings.blob_retry_total, retry_backoff_s=settings.blob_retry_backoff_s,
    )


def blob_config_for(settings: Settings) -> BlobStoreConfig:
    return blob_config_from(get_connection(BLOB_STORAGE), settings)


def blob_store_for(settings: Settings) -> BlobStore:
    return open_blob_store(blob_config_for(settings))
