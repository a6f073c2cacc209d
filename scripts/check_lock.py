"""Check that requirements.lock still matches what the project asks for (no network).

Every requirement of ``requirements-dev.txt`` (and the files it includes with ``-r``) and every
dependency of ``pyproject.toml`` must be pinned in the lock (``name==version``), at a version
its specifier allows, with the packages of its extras (``psycopg[binary]`` → ``psycopg-binary``)
locked too; and nothing may stay locked only because a requirements file asked for it when the
files no longer do (the lock's ``# via -r requirements.txt`` comments).  Run ``make lock`` when
it fails.  (It does not re-resolve: a new release of a dependency is not "stale".)

    python scripts/check_lock.py [--lock requirements.lock] [--project pyproject.toml] [REQUIREMENTS ...]

Exits 1 and lists every mismatch, 0 when the lock is fresh.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = Path(__file__).resolve().parents[1]


def read_requirements(path: Path, seen: set[Path] | None = None) -> list[tuple[Requirement, str]]:
    """The requirements of a requirements file, following ``-r`` includes: (requirement, where)."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    found: list[tuple[Requirement, str]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            found += read_requirements(path.parent / line.split(None, 1)[1], seen)
            continue
        if line.startswith("-"):
            continue  # pip options (index URLs, constraints): not requirements
        try:
            found.append((Requirement(line), f"{path.name}:{number}"))
        except InvalidRequirement as exc:
            raise SystemExit(f"{path.name}:{number}: not a requirement: {line!r} ({exc})") from exc
    return found


def project_dependencies(pyproject: Path) -> list[tuple[Requirement, str]]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    deps = data.get("project", {}).get("dependencies", [])
    return [(Requirement(dep), f"{pyproject.name} [project] dependencies") for dep in deps]


def read_lock(path: Path) -> dict[str, Version]:
    """``name -> version`` of every ``name==version`` line of a uv/pip-compile lock."""
    return {name: version for name, (version, _) in read_lock_entries(path).items()}


def read_lock_entries(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """``name -> (version, via)`` of a uv/pip-compile lock: its pins with what each is there for
    (the ``# via`` comments: package names, or ``-r requirements.txt`` for a direct requirement)."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    via: list[str] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
        line = raw.split("#", 1)[0].split(";", 1)[0].strip().rstrip("\\").strip()
        if not line:
            if via is not None and raw.startswith((" ", "\t")) and comment:
                via.append(comment.removeprefix("via").strip())
            continue
        if line.startswith("-"):
            continue
        if "==" not in line:
            raise SystemExit(f"{path.name}: not a pin: {raw!r}")
        name, version = line.split("==", 1)
        via = []
        entries[canonicalize_name(name.split("[", 1)[0])] = (Version(version.strip()), via)
    return entries


def leftovers(requirements: list[tuple[Requirement, str]], entries: dict[str, tuple[Version, list[str]]]) -> list[str]:
    """Packages the lock holds only as direct requirements that no requirement names any more."""
    named = {canonicalize_name(req.name) for req, _ in requirements}
    found = []
    for name, (version, via) in entries.items():
        reasons = [v for v in via if v]
        if reasons and all(v.startswith("-r ") for v in reasons) and name not in named:
            found.append(
                f"{name}=={version} is locked for {', '.join(r[3:] for r in reasons)}, which no longer lists it"
            )
    return found


def problems(requirements: list[tuple[Requirement, str]], pins: dict[str, Version]) -> list[str]:
    """What does not match: requirements missing from the lock or locked at a version they refuse."""
    found: list[str] = []
    for req, where in requirements:
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        version = pins.get(name)
        if version is None:
            found.append(f"{where}: {req} is not in the lock")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            found.append(f"{where}: {req} but the lock pins {req.name}=={version}")
        for extra in sorted(req.extras):
            if canonicalize_name(f"{req.name}-{extra}") not in pins and canonicalize_name(extra) not in pins:
                found.append(f"{where}: {req} but nothing of its extra [{extra}] is in the lock")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("requirements", nargs="*", type=Path, default=[PROJECT / "requirements-dev.txt"])
    parser.add_argument("--lock", type=Path, default=PROJECT / "requirements.lock")
    parser.add_argument(
        "--project",
        type=Path,
        default=PROJECT / "pyproject.toml",
        help="its [project] dependencies must be locked too (--project '' to skip)",
    )
    args = parser.parse_args(argv)
    requirements = [r for path in args.requirements for r in read_requirements(path)]
    if str(args.project) not in ("", "."):
        requirements += project_dependencies(args.project)
    entries = read_lock_entries(args.lock)
    pins = {name: version for name, (version, _) in entries.items()}
    found = problems(requirements, pins) + leftovers(requirements, entries)
    if found:
        print(f"{args.lock.name} is stale (run `make lock`):", file=sys.stderr)
        for problem in found:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.lock.name}: all {len(requirements)} requirements pinned ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
