"""Install the IATI XML schemas (2.01, 2.02, 2.03) for the built-in validator.

The schemas are not committed: they come from the pyIATI 0.4.1 source distribution on
PyPI, which carries them per version under ``iati/resources/standard/<2-0x>/schemas/``.
The archive is checked against a pinned SHA-256 before anything is extracted, and only the
four files the validator needs are written (never a path taken from the archive itself)::

    python -m iati_refresher.validation.fetch_schemas [--dest DIR] [--sdist FILE]

The download uses PyPI's simple index (the JSON form pip itself reads), honouring
``PIP_INDEX_URL`` for mirrors.  Running it again is a no-op once the files are present.
``--sdist`` installs from an archive downloaded elsewhere (for offline machines).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

PACKAGE = "pyIATI"
PACKAGE_VERSION = "0.4.1"
SDIST_NAME = f"{PACKAGE}-{PACKAGE_VERSION}.tar.gz"
SDIST_SHA256 = "b6f8f0d596746bd774ed3e84cdad50dfa7dd501ac70e6399f2bb0244bfd5b0ef"
DEFAULT_INDEX_URL = "https://pypi.org/simple"

IATI_VERSIONS = ("2.01", "2.02", "2.03")
SCHEMA_FILES = ("iati-activities-schema.xsd", "iati-organisations-schema.xsd", "iati-common.xsd", "xml.xsd")
PROVENANCE_FILE = "SOURCE.txt"

CHUNK = 1024 * 1024

# pyIATI's 2.03 organisation schema declares a non-deterministic content model (the
# recipient-country extension of documentLinkBase ends with a second xsd:any ##other after
# the base's own), which libxml2 2.10+ refuses to compile.  IATI-Schemas fixed it upstream
# (version-2.03 branch) by dropping that trailing wildcard; the same one-line change is
# applied here.  Each patch must match exactly once, or installation stops.
_WILDCARD = '<xsd:any namespace="##other" processContents="lax" minOccurs="0" maxOccurs="unbounded"/>'
PATCHES: dict[tuple[str, str], tuple[str, str]] = {
    ("2.03", "iati-organisations-schema.xsd"): (
        f"          </xsd:element>\n          {_WILDCARD}\n        </xsd:sequence>\n      </xsd:extension>\n",
        "          </xsd:element>\n        </xsd:sequence>\n      </xsd:extension>\n",
    ),
}


class SchemaFetchError(RuntimeError):
    """The schemas could not be installed (offline, checksum mismatch, unexpected archive)."""


def schemas_present(dest: str | os.PathLike[str]) -> bool:
    """True when every schema file of every supported version is already in ``dest``."""
    root = Path(dest)
    return all((root / version / name).is_file() for version in IATI_VERSIONS for name in SCHEMA_FILES)


def fetch_schemas(
    dest: str | os.PathLike[str],
    *,
    sdist: str | os.PathLike[str] | None = None,
    index_url: str | None = None,
    timeout_s: float = 120.0,
    force: bool = False,
) -> bool:
    """Install the schemas into ``dest/<version>/``.

    :param dest: target directory (``settings.schemas_dir``).
    :param sdist: a local copy of the pyIATI sdist to use instead of downloading it.
    :param index_url: a PyPI simple index (default ``PIP_INDEX_URL`` or pypi.org).
    :param timeout_s: HTTP timeout for the index and the download.
    :param force: reinstall even when the files are present.
    :return: True when files were written, False when they were already there.
    :raises SchemaFetchError: offline, checksum mismatch, or files missing from the archive.
    """
    target = Path(dest)
    if schemas_present(target) and not force:
        return False
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="iati-schemas-", dir=target) as tmp:
        archive = Path(sdist) if sdist else _download_sdist(Path(tmp), index_url, timeout_s)
        _verify(archive)
        staged = Path(tmp) / "staged"
        _extract(archive, staged)
        _patch(staged)
        for version in IATI_VERSIONS:
            final = target / version
            if final.exists():
                shutil.rmtree(final)
            # A rename within one directory: a reader never sees half a version.
            (staged / version).rename(final)
        (target / PROVENANCE_FILE).write_text(_provenance(), encoding="utf-8")
    return True


def _provenance() -> str:
    return (
        f"IATI schemas {', '.join(IATI_VERSIONS)} extracted from {SDIST_NAME} (PyPI, sha256 {SDIST_SHA256}).\n"
        "Licence: IATI Standard, Creative Commons Attribution 4.0 (attribute 'IATI Standard',\n"
        "http://iatistandard.org/); xml.xsd is the W3C schema for the XML namespace.\n"
        "2.03/iati-organisations-schema.xsd: one trailing xsd:any wildcard removed from\n"
        "documentLinkWithReceipientCountry, as in IATI-Schemas upstream (libxml2 refuses the original).\n"
        "Installed by `python -m iati_refresher.validation.fetch_schemas`; not part of the repository.\n"
    )


def _download_sdist(workdir: Path, index_url: str | None, timeout_s: float) -> Path:
    index = (index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")
    project_url = f"{index}/{PACKAGE.lower()}/"
    out = workdir / SDIST_NAME
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            listing = client.get(project_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            listing.raise_for_status()
            url = _sdist_url(listing.json(), project_url)
            with client.stream("GET", url) as response:
                response.raise_for_status()
                with open(out, "wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
    except httpx.HTTPError as exc:
        raise SchemaFetchError(
            f"could not download {SDIST_NAME} from {index} ({exc}); check the network, or download the "
            f"file elsewhere and pass it with --sdist"
        ) from exc
    except ValueError as exc:  # the index answered something that is not the JSON simple API
        raise SchemaFetchError(f"unexpected answer from the package index {project_url}: {exc}") from exc
    return out


def _sdist_url(listing: dict, project_url: str) -> str:
    for entry in listing.get("files", []):
        if entry.get("filename") == SDIST_NAME:
            listed = (entry.get("hashes") or {}).get("sha256")
            if listed and listed != SDIST_SHA256:
                raise SchemaFetchError(f"the index lists {SDIST_NAME} with sha256 {listed}, expected {SDIST_SHA256}")
            return str(httpx.URL(project_url).join(entry["url"]))
    raise SchemaFetchError(f"{SDIST_NAME} is not listed at {project_url}")


def _verify(archive: Path) -> None:
    digest = hashlib.sha256()
    try:
        with open(archive, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SchemaFetchError(f"cannot read {archive}: {exc}") from exc
    if digest.hexdigest() != SDIST_SHA256:
        raise SchemaFetchError(f"{archive} has sha256 {digest.hexdigest()}, expected {SDIST_SHA256}; refusing it")


def _extract(archive: Path, staged: Path) -> None:
    """Copy the known schema files out of the archive (names chosen here, never from it)."""
    prefix = f"{PACKAGE}-{PACKAGE_VERSION}/iati/resources/standard"
    with tarfile.open(archive, "r:gz") as tar:
        for version in IATI_VERSIONS:
            (staged / version).mkdir(parents=True)
            for name in SCHEMA_FILES:
                member_name = f"{prefix}/{version.replace('.', '-')}/schemas/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError as exc:
                    raise SchemaFetchError(f"{archive.name} has no {member_name}") from exc
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise SchemaFetchError(f"{member_name} in {archive.name} is not a regular file")
                with source, open(staged / version / name, "wb") as out:
                    shutil.copyfileobj(source, out)


def _patch(staged: Path) -> None:
    for (version, name), (old, new) in PATCHES.items():
        path = staged / version / name
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise SchemaFetchError(f"cannot apply the known fix to {version}/{name}: the text to change is not there")
        path.write_text(text.replace(old, new), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    from iati_refresher.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=None, help="target directory (default: settings.schemas_dir)")
    parser.add_argument("--sdist", default=None, help=f"use this local {SDIST_NAME} instead of downloading it")
    parser.add_argument("--index-url", default=None, help="PyPI simple index URL (default: PIP_INDEX_URL or pypi.org)")
    parser.add_argument("--force", action="store_true", help="reinstall even if the schemas are present")
    args = parser.parse_args(argv)
    dest = args.dest or get_settings().schemas_dir
    try:
        written = fetch_schemas(dest, sdist=args.sdist, index_url=args.index_url, force=args.force)
    except SchemaFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"IATI schemas {'installed in' if written else 'already present in'} {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
