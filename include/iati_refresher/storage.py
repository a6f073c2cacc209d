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
from typing import Any, Protocol

from iati_refresher.connections import BLOB_STORAGE, ConnectionInfo, ConnectionMissing, get_connection
from iati_refresher.settings import Settings

DELETE_CHUNK = 250  # Azure's batch delete takes at most 256 blobs


class BlobNotFound(LookupError):
    """The blob does not exist."""


class BlobStorageError(RuntimeError):
    """The storage service failed (network, service error); worth retrying later."""


@dataclass(frozen=True)
class BlobStoreConfig:
    """Everything needed to open a store in any process (picklable; holds secrets: never log).

    For Azure it holds the ``wasb`` connection itself: the task process opens the client
    through the Azure provider's ``WasbHook`` (every credential it supports: a connection
    string, an account key, a SAS token, a service principal, managed or workload identity
    through ``DefaultAzureCredential``); stage worker processes, which must not pay
    Airflow's import, open it with :func:`azure_service_client`, which takes the same
    decisions in the same order (a test holds the two together).
    """

    backend: str = "local"  # "local" or "azure"
    local_dir: str = ""
    connection: ConnectionInfo | None = field(default=None, repr=False)
    retry_total: int = 3  # retries of one Azure request (see ``Settings.blob_retry_total``)
    retry_backoff_s: int = 2
    timeout_s: float = 300.0

    @property
    def connection_string(self) -> str:
        """The connection string of the ``wasb`` connection, when it has one ('' otherwise)."""
        if self.connection is None:
            return ""
        return str(_wasb_field(self.connection.extra, "connection_string") or "")

    def client_options(self) -> dict[str, object]:
        """What the Azure SDK's clients take besides the credential: our retry policy (a few
        quick retries: the SDK's default waits of 15 s and more hold every blob request for
        about 90 s while storage is down; longer outages are the stage retries' business)."""
        return {
            "retry_total": self.retry_total,
            "initial_backoff": self.retry_backoff_s,
            "increment_base": 1,
            "random_jitter_range": min(1, self.retry_backoff_s),
            "connection_timeout": 20,
            "read_timeout": self.timeout_s,
        }

    def describe(self) -> str:
        if self.backend == "local":
            return f"local directory {self.local_dir}"
        return f"azure blob storage at {azure_account_url(self.connection)}"


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
    def list_digests(self, container: str, prefix: str = "") -> dict[str, bytes | None]: ...
    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None: ...


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"unsafe blob name: {name!r}")
    return name


_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _holds(path: str, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (read only when the sizes match)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != len(data):
                return False
            return f.read() == data
    except OSError:
        return False


class LocalBlobStore:
    """Blobs as files under ``root/<container>/<name>`` (the embedded default)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._root = str(root)
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
        """Store ``data``; a blob that already holds exactly ``data`` is left alone.

        A new blob is created in place (nothing was visible under its name, so no reader can
        see a half-replaced one); an existing blob is replaced atomically through a temporary
        file.  The lake writes thousands of small blobs per document, where the extra file
        and rename of the atomic path cost more than the stage's own work.
        """
        target = os.path.join(self._root, _check_name(container), _check_name(name))
        try:
            fd = os.open(target, _CREATE_NEW, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd = os.open(target, _CREATE_NEW, 0o644)
        except FileExistsError:
            if _holds(target, data):
                return
            tmp = self._temporary(Path(target))
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
            return
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise

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

    def list_digests(self, container: str, prefix: str = "") -> dict[str, bytes | None]:
        """The blobs under ``prefix``, digests unknown (:meth:`put_bytes` compares contents itself)."""
        return dict.fromkeys(self.list(container, prefix))

    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None:
        source = self._path(src_container, src_name)
        if not source.is_file():
            raise BlobNotFound(f"{src_container}/{src_name}")
        self.put_file(dst_container, dst_name, source)


class AzureBlobStore:
    """Azure Blob Storage (or Azurite) through azure-storage-blob.

    :param connection_string: a storage connection string (tests, tools), or
    :param service: a ready ``BlobServiceClient`` (what :func:`open_blob_store` passes).
    """

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        service: object | None = None,
        timeout_s: float = 300.0,
        retry_total: int = 3,
        retry_backoff_s: int = 2,
    ):
        if service is None:
            if not connection_string:
                raise ValueError("AzureBlobStore needs a connection string or a service client")
            config = BlobStoreConfig(
                backend="azure",
                retry_total=retry_total,
                retry_backoff_s=retry_backoff_s,
                timeout_s=timeout_s,
                connection=ConnectionInfo(BLOB_STORAGE, "wasb", extra={"connection_string": connection_string}),
            )
            service = azure_service_client(config)
        self._service: Any = service

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._service.close()

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
            for blob in self._service.get_container_client(container).list_blobs(name_starts_with=prefix or None):
                yield blob.name
        except ResourceNotFoundError:
            return
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{prefix}*") from exc

    def list_digests(self, container: str, prefix: str = "") -> dict[str, bytes | None]:
        """The blobs under ``prefix`` with the MD5 the service keeps of each (``None``: none)."""
        from azure.core.exceptions import ResourceNotFoundError

        found: dict[str, bytes | None] = {}
        try:
            for blob in self._service.get_container_client(container).list_blobs(name_starts_with=prefix or None):
                md5 = blob.content_settings.content_md5
                found[blob.name] = bytes(md5) if md5 else None
        except ResourceNotFoundError:
            return {}
        except Exception as exc:
            raise self._wrap(exc, f"{container}/{prefix}*") from exc
        return found

    def copy(self, src_container: str, src_name: str, dst_container: str, dst_name: str) -> None:
        # Stream through a local temporary file: a server-side copy is asynchronous and
        # the reference raced on it (a clean file read before the copy had finished).
        with tempfile.NamedTemporaryFile(prefix="blob-copy-") as tmp:
            self.get_to_file(src_container, src_name, tmp.name)
            self.put_file(dst_container, dst_name, tmp.name)


def open_blob_store(config: BlobStoreConfig) -> BlobStore:
    if config.backend == "azure":
        return AzureBlobStore(service=azure_service_client(config))
    if config.backend == "local":
        return LocalBlobStore(config.local_dir)
    raise ValueError(f"unknown blob backend {config.backend!r}")


# --- Azure clients: WasbHook in Airflow's processes, the same decisions without it ------------------

#: Set in stage worker processes (and the CLI): open Azure clients without importing Airflow.
LIGHT_CLIENTS = [False]


def _wasb_field(extra: dict[str, Any], name: str) -> Any:
    """An extra of a ``wasb`` connection, plain or with the UI's ``extra__wasb__`` prefix (as WasbHook reads it)."""
    if name in extra:
        return extra[name] or None
    return extra.get(f"extra__wasb__{name}") or None


def azure_account_url(conn: ConnectionInfo | None) -> str:
    """The blob endpoint a ``wasb`` connection names (for logs: no secret in it)."""
    if conn is None:
        return "?"
    connection_string = _wasb_field(conn.extra, "connection_string")
    if connection_string:
        parts = dict(p.split("=", 1) for p in str(connection_string).split(";") if "=" in p)
        if parts.get("BlobEndpoint"):
            return parts["BlobEndpoint"].rstrip("/")
        if parts.get("UseDevelopmentStorage", "").lower() == "true":
            return "http://127.0.0.1:10000/devstoreaccount1"
        return f"https://{parts.get('AccountName', '?')}.blob.{parts.get('EndpointSuffix', 'core.windows.net')}"
    host = conn.host
    if host.startswith("https") and "?" in host:  # an account URL with a SAS token in it
        host = host.split("?", 1)[0]
    return _account_url(host, conn.login)


def _account_url(host: str, login: str) -> str:
    """``parse_blob_account_url`` of the Azure provider: the host if it is a URL, else the account's."""
    if host and "://" in host:
        return host.rstrip("/")
    account = host or login
    return f"https://{account}.blob.core.windows.net"


def azure_service_client(config: BlobStoreConfig) -> Any:
    """A ``BlobServiceClient`` for the config's ``wasb`` connection, with our client options.

    In Airflow's processes this is ``WasbHook.get_conn()`` (the Azure provider decides how to
    authenticate).  Where Airflow must not be imported (stage worker processes, the CLI) the
    same decisions are taken here, in the same order: connection string; service principal
    (``tenant_id``); shared access key; SAS token; the password or ``account_key`` as the
    account key; else ``DefaultAzureCredential`` (managed identity, workload identity, the
    environment).
    """
    conn = config.connection
    if conn is None:
        raise ValueError("an Azure blob store needs its wasb connection")
    options = config.client_options()
    if not LIGHT_CLIENTS[0]:
        try:
            from iati_refresher.hooks.blob import RefresherWasbHook
        except ImportError:  # pragma: no cover - the Azure provider is a dependency
            pass
        else:
            return RefresherWasbHook(connection=conn, client_options=options).get_conn()
    from azure.storage.blob import BlobServiceClient

    extra = {k: v for k, v in conn.extra.items() if not k.startswith("extra__")}
    for name in (
        "connection_string",
        "tenant_id",
        "shared_access_key",
        "sas_token",
        "account_key",
        "managed_identity_client_id",
        "workload_identity_tenant_id",
        "client_secret_auth_config",
    ):
        extra.pop(name, None)
    kwargs = {**options, **extra}
    connection_string = _wasb_field(conn.extra, "connection_string")
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **kwargs)
    account_url = _account_url(conn.host, conn.login)
    tenant = _wasb_field(conn.extra, "tenant_id")
    if tenant:
        from azure.identity import ClientSecretCredential

        secret = ClientSecretCredential(
            tenant_id=tenant,
            client_id=conn.login,
            client_secret=conn.password,
            **(conn.extra.get("client_secret_auth_config") or {}),
        )
        return BlobServiceClient(account_url=account_url, credential=secret, **kwargs)
    shared_access_key = _wasb_field(conn.extra, "shared_access_key")
    if shared_access_key:
        return BlobServiceClient(account_url=account_url, credential=shared_access_key, **kwargs)
    sas_token = _wasb_field(conn.extra, "sas_token")
    if sas_token:
        if str(sas_token).startswith("https"):
            return BlobServiceClient(account_url=sas_token, **kwargs)
        from azure.core.credentials import AzureSasCredential

        return BlobServiceClient(account_url=account_url, credential=AzureSasCredential(sas_token), **kwargs)
    credential: Any = conn.password or _wasb_field(conn.extra, "account_key")
    if not credential:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(
            managed_identity_client_id=_wasb_field(conn.extra, "managed_identity_client_id"),
            workload_identity_tenant_id=_wasb_field(conn.extra, "workload_identity_tenant_id"),
        )
    return BlobServiceClient(account_url=account_url, credential=credential, **kwargs)


def blob_config_from(conn: ConnectionInfo | None, settings: Settings) -> BlobStoreConfig:
    """The store for a ``wasb`` connection, or — only in an embedded run — the local directory."""
    if conn is None:
        if not settings.embedded:
            raise ConnectionMissing(BLOB_STORAGE, "Azure Blob Storage for the files the pipeline keeps")
        return BlobStoreConfig(backend="local", local_dir=settings.local_blob_dir)
    return BlobStoreConfig(
        backend="azure",
        connection=conn,
        retry_total=settings.blob_retry_total,
        retry_backoff_s=settings.blob_retry_backoff_s,
    )


def blob_config_for(settings: Settings) -> BlobStoreConfig:
    return blob_config_from(get_connection(BLOB_STORAGE), settings)


@contextlib.contextmanager
def blob_store(settings: Settings) -> Iterator[BlobStore]:
    """The deployment's blob store, closed afterwards."""
    store = open_blob_store(blob_config_for(settings))
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
