"""Generate a synthetic IATI registry, deterministically, from real activity shapes.

Usage::

    python bench/make_corpus.py OUT_DIR [--datasets 200] [--publishers 20] [--activities 5000]
                                [--seed 1] [--templates ../shared/corpus] [--invalid-share 0.05]
                                [--broken-share 0.02] [--non-utf8-share 0.03] [--organisation-share 0.01]
    python bench/make_corpus.py OUT_DIR --change 0.01      # publish new versions of 1 % of the datasets

``OUT_DIR/registry.json`` lists the publishers and datasets (the shape the sample registry
server reads, plus each file's Bulk Data Service hash, kind and activity count) and
``OUT_DIR/files/`` holds the XML.  The same arguments and templates always give the same
bytes.

Activities are real ones: every IATI 2.0x activity of the template corpus (``real/`` and
``derived/`` of ``--templates``; the package's sample data when that is missing), each
given a new identifier.  Activities larger than ``--max-activity-kb`` are left out of the
pool so one draw cannot dominate a run.  Each template is validated once (built-in XSD
validator) so *valid* files only hold schema-valid activities and *invalid* files hold a
known share of invalid ones.

The number of activities per file follows a log-normal distribution (many small files,
a few large ones, as on the real registry) scaled so the activity files (valid, invalid,
non-UTF-8) hold ``--activities`` in total.  Kinds:

* ``valid``: schema-valid activities, UTF-8;
* ``invalid``: about a third of the activities schema-invalid (the clean stage keeps the rest);
* ``non_utf8``: valid activities in windows-1252 or ISO-8859-1 (declared), with accented text;
* ``broken``: a truncated file, an HTML error page, a non-IATI XML root or an empty body;
* ``organisation``: an organisation file (stops before flattening, as on the real registry).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from iati_refresher.iati.encoding import sniff_encoding
from iati_refresher.iati.xml import root_info, safe_iterparse
from iati_refresher.sample.server import hash_excluding_generated_timestamp

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATES = PROJECT.parent / "shared" / "corpus"
SAMPLE_DATA = PROJECT / "include" / "iati_refresher" / "sample" / "data"
MANIFEST = "registry.json"
FILES_DIR = "files"
KINDS = ("valid", "invalid", "non_utf8", "broken", "organisation")
ACTIVITY_KINDS = ("valid", "invalid", "non_utf8")  # the files whose activities count towards --activities
BROKEN_VARIANTS = ("truncated", "html", "not_iati", "empty")
NON_UTF8_ENCODINGS = ("windows-1252", "iso-8859-1")
# Placeholders written into each template once, replaced per generated activity.
_ID = "@@BENCH-IDENTIFIER@@"
_NOTE = "@@BENCH-NOTE@@"
_PLACEHOLDERS = re.compile(re.escape(_ID).encode() + b"|" + re.escape(_NOTE).encode())
_INVALID_ELEMENT = b"<bench-undeclared-element>not in the IATI schema</bench-undeclared-element>"
_ACTIVITY_END = b"</iati-activity>"
_NOTE_TEXT = " \u2013 r\u00e9vision de l\u2019ann\u00e9e (\u00e9t\u00e9)"  # representable in windows-1252
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>\n"
    b"<body><h1>Service Unavailable</h1><p>The server is temporarily busy.</p></body></html>\n"
)


@dataclass(frozen=True)
class Template:
    """One real activity, split around its identifier and its first narrative's end.

    :param parts: byte segments; between segment ``i`` and ``i + 1`` goes ``slots[i]``.
    :param slots: ``"id"`` or ``"note"`` for each gap.
    :param valid: whether the activity is schema-valid (IATI 2.03 XSD).
    """

    parts: tuple[bytes, ...]
    slots: tuple[str, ...]
    valid: bool
    source: str

    def render(self, identifier: bytes, note: bytes, *, invalid: bool = False) -> bytes:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(identifier if slot == "id" else note)
            out.append(part)
        data = b"".join(out)
        if invalid:
            end = data.rfind(_ACTIVITY_END)
            data = data[:end] + _INVALID_ELEMENT + data[end:]
        return data


@dataclass(frozen=True)
class TemplatePool:
    """The activity templates of a corpus and, when found, an organisation file."""

    valid: tuple[Template, ...]
    invalid: tuple[Template, ...]
    organisation: bytes | None
    sources: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------


def template_files(templates_dir: Path) -> list[Path]:
    """The XML files of a template corpus: ``real/`` and ``derived/`` if present, else the directory."""
    folders = [templates_dir / "real", templates_dir / "derived"]
    folders = [f for f in folders if f.is_dir()] or [templates_dir]
    return sorted(p for folder in folders for p in folder.glob("*.xml"))


def _iter_activity_elements(path: Path) -> Iterator[etree._Element]:
    root = None
    for event, element in safe_iterparse(str(path), events=("start", "end"), recover=True):
        if root is None:
            root = element
            continue
        if event == "end" and element.tag == "iati-activity" and element.getparent() is root:
            yield element
            element.clear(keep_tail=False)
            while element.getprevious() is not None:
                del root[0]


def _templated(element: etree._Element) -> bytes:
    """The activity serialised with the identifier and note placeholders in place."""
    identifier = element.find("iati-identifier")
    if identifier is None:
        identifier = etree.Element("iati-identifier")
        element.insert(0, identifier)
    for child in list(identifier):
        identifier.remove(child)
    identifier.text = _ID
    narrative = next(element.iter("narrative"), None)
    if narrative is not None and len(narrative) == 0:
        narrative.text = (narrative.text or "") + _NOTE
    return etree.tostring(element, encoding="utf-8", with_tail=False)


def _split(data: bytes) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    parts: list[bytes] = []
    slots: list[str] = []
    position = 0
    for match in _PLACEHOLDERS.finditer(data):
        parts.append(data[position : match.start()])
        slots.append("id" if match.group() == _ID.encode() else "note")
        position = match.end()
    parts.append(data[position:])
    return tuple(parts), tuple(slots)


def load_templates(templates_dir: Path, max_activity_bytes: int = 256 * 1024) -> TemplatePool:
    """Read every IATI 2.0x activity of ``templates_dir`` and validate each once.

    :raises SystemExit: no usable activity was found.
    """
    from iati_refresher.validation.builtin import validate_file

    raw: list[tuple[str, bytes]] = []
    organisation = None
    sources = []
    for path in template_files(templates_dir):
        tag, attrib = root_info(path)
        version = attrib.get("version", "")
        if tag == "iati-organisations" and organisation is None:
            organisation = path.read_bytes()
            sources.append(path.name)
        if tag != "iati-activities" or version.startswith("1"):
            continue
        sources.append(path.name)
        for element in _iter_activity_elements(path):
            data = _templated(element)
            if len(data) <= max_activity_bytes:
                raw.append((path.name, data))
    if not raw:
        raise SystemExit(f"no IATI 2.0x activities found under {templates_dir}")
    # One validation run over all templates in a 2.03 container: the report's per-activity
    # list (in document order) says which templates are schema-valid.
    with tempfile.TemporaryDirectory(prefix="corpus-templates-") as tmp:
        probe = Path(tmp) / "templates.xml"
        with open(probe, "wb") as out:
            out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03">\n')
            for n, (_source, data) in enumerate(raw):
                parts, slots = _split(data)
                out.write(Template(parts, slots, True, "").render(f"XM-BENCH-PROBE-{n}".encode(), b"") + b"\n")
            out.write(b"</iati-activities>\n")
        _status, report = validate_file(probe, meta=True)
    meta = report.get("iati-activities") or []
    flags = {int(m["index"]): bool(m["valid"]) for m in meta if "index" in m}
    valid: list[Template] = []
    invalid: list[Template] = []
    for n, (source, data) in enumerate(raw):
        parts, slots = _split(data)
        template = Template(parts, slots, flags.get(n, False), source)
        (valid if template.valid else invalid).append(template)
    if not valid:
        raise SystemExit(f"no schema-valid IATI 2.0x activity found under {templates_dir}")
    if organisation is None:
        sample_org = SAMPLE_DATA / "condor-verde-organisation.xml"
        organisation = sample_org.read_bytes() if sample_org.exists() else None
    return TemplatePool(tuple(valid), tuple(invalid), organisation, tuple(sources))


# ---------------------------------------------------------------------------------------
# the registry plan (which dataset is what) and the files
# ---------------------------------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def activity_counts(rng: random.Random, datasets: int, total: int, *, sigma: float, cap: int) -> list[int]:
    """Activities per file: log-normal weights scaled to ``total`` (each at least 1, at most ``cap``)."""
    if datasets <= 0:
        return []
    weights = [rng.lognormvariate(0.0, sigma) for _ in range(datasets)]
    scale = total / sum(weights)
    counts = [min(cap, max(1, round(w * scale))) for w in weights]
    # Rounding and the cap move the sum a little: spread the difference over the files.
    difference = total - sum(counts)
    order = sorted(range(datasets), key=lambda i: -counts[i])
    i = 0
    while difference and i < 10 * datasets:
        index = order[i % datasets]
        step = 1 if difference > 0 else -1
        if 1 <= counts[index] + step <= cap:
            counts[index] += step
            difference -= step
        i += 1
    return counts


def kind_plan(rng: random.Random, datasets: int, shares: dict[str, float]) -> list[str]:
    """Exactly ``round(share * datasets)`` datasets of each kind (the rest valid), shuffled."""
    kinds: list[str] = []
    for kind in ("invalid", "non_utf8", "broken", "organisation"):
        kinds += [kind] * round(shares.get(kind, 0.0) * datasets)
    if len(kinds) > datasets:
        raise SystemExit("the shares of invalid, non-UTF-8, broken and organisation files add up to more than 1")
    kinds += ["valid"] * (datasets - len(kinds))
    rng.shuffle(kinds)
    return kinds


def publisher_plan(rng: random.Random, publishers: int, datasets: int) -> list[int]:
    """Publisher index per dataset: every publisher gets one, the rest Zipf-like (a few publish a lot)."""
    owners = list(range(min(publishers, datasets)))
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(publishers)]
    owners += rng.choices(range(publishers), weights=weights, k=datasets - len(owners))
    rng.shuffle(owners)
    return owners


def render_file(
    pool: TemplatePool,
    rng: random.Random,
    *,
    kind: str,
    activities: int,
    identifier_prefix: str,
    generated: str,
) -> tuple[bytes, int, str]:
    """One dataset file: (bytes, activity elements written, encoding or variant)."""
    if kind == "organisation":
        return pool.organisation or b"", 0, "utf-8"
    encoding = rng.choice(NON_UTF8_ENCODINGS) if kind == "non_utf8" else "utf-8"
    variant = rng.choice(BROKEN_VARIANTS) if kind == "broken" else ""
    if variant == "html":
        return HTML_ERROR_PAGE, 0, variant
    if variant == "empty":
        return b"", 0, variant
    if variant == "not_iati":
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>{identifier_prefix}'
        return (body + "</title></channel></rss>\n").encode(), 0, variant
    bad = set(rng.sample(range(activities), k=max(1, activities // 3))) if kind == "invalid" else set()
    note = _NOTE_TEXT.encode("utf-8") if kind == "non_utf8" else b""
    chunks = [
        f'<?xml version="1.0" encoding="{encoding.upper() if kind == "non_utf8" else "UTF-8"}"?>\n'
        f'<iati-activities version="2.03" generated-datetime="{generated}">\n'.encode()
    ]
    for n in range(activities):
        identifier = f"{identifier_prefix}-{n:05d}".encode()
        if n in bad and pool.invalid and rng.random() < 0.5:
            chunks.append(rng.choice(pool.invalid).render(identifier, note))
        else:
            chunks.append(rng.choice(pool.valid).render(identifier, note, invalid=n in bad))
        chunks.append(b"\n")
    chunks.append(b"</iati-activities>\n")
    data = b"".join(chunks)
    if kind == "non_utf8":
        data = data.decode("utf-8").encode(encoding, errors="xmlcharrefreplace")
    if variant == "truncated":
        data = data[: max(64, int(len(data) * 0.6))]
    return data, activities, variant or encoding


def bds_hash(path: Path) -> str:
    """The Bulk Data Service hash of a file (generated-datetime excluded)."""
    info = sniff_encoding(path)
    return hash_excluding_generated_timestamp(path.read_bytes(), info.encoding)


def _dataset_rng(seed: int, index: int, generation: int) -> random.Random:
    return random.Random(f"{seed}:dataset:{index}:generation:{generation}")


def _write_dataset(out_dir: Path, pool: TemplatePool, entry: dict[str, Any], seed: int) -> None:
    rng = _dataset_rng(seed, entry["index"], entry["generation"])
    generated = f"2026-01-01T00:00:{entry['generation'] % 60:02d}Z"
    data, written, detail = render_file(
        pool,
        rng,
        kind=entry["kind"],
        activities=entry["planned_activities"],
        identifier_prefix=entry["identifier_prefix"],
        generated=generated,
    )
    path = out_dir / FILES_DIR / entry["file"]
    path.write_bytes(data)
    entry.update(activities=written, bytes=len(data), detail=detail, hash=bds_hash(path))


def generate(
    out_dir: Path,
    *,
    datasets: int,
    publishers: int,
    activities: int,
    seed: int = 1,
    templates_dir: Path | None = None,
    invalid_share: float = 0.05,
    broken_share: float = 0.02,
    non_utf8_share: float = 0.03,
    organisation_share: float = 0.01,
    sigma: float = 1.0,
    max_activities_per_file: int = 5000,
    max_activity_kb: int = 256,
) -> dict[str, Any]:
    """Write a registry of ``datasets`` files from ``publishers`` publishers under ``out_dir``.

    :return: the manifest (also written to ``out_dir/registry.json``).
    """
    if datasets < 1 or publishers < 1 or activities < 0:
        raise SystemExit("need at least one dataset and one publisher")
    templates_dir = templates_dir or (DEFAULT_TEMPLATES if DEFAULT_TEMPLATES.is_dir() else SAMPLE_DATA)
    pool = load_templates(templates_dir, max_activity_kb * 1024)
    rng = random.Random(f"{seed}:registry")
    shares = {
        "invalid": invalid_share,
        "non_utf8": non_utf8_share,
        "broken": broken_share,
        "organisation": organisation_share,
    }
    kinds = kind_plan(rng, datasets, shares)
    # ``activities`` is what the activity files hold in total; broken and organisation files
    # get a size from the same distribution, but it does not count.
    bearing = [i for i, kind in enumerate(kinds) if kind in ACTIVITY_KINDS]
    other = [i for i, kind in enumerate(kinds) if kind not in ACTIVITY_KINDS]
    counts = [0] * datasets
    mean = max(1, activities // max(1, len(bearing)))
    for i, n in zip(
        bearing, activity_counts(rng, len(bearing), activities, sigma=sigma, cap=max_activities_per_file), strict=True
    ):
        counts[i] = n
    for i, n in zip(
        other,
        activity_counts(rng, len(other), mean * len(other), sigma=sigma, cap=max_activities_per_file),
        strict=True,
    ):
        counts[i] = n
    owners = publisher_plan(rng, publishers, datasets)
    pubs = []
    for p in range(publishers):
        pubs.append(
            {
                "id": _uuid(rng),
                "short_name": f"bench-pub{p:05d}",
                "human_readable_name": f"Benchmark publisher {p}",
                "iati_identifier": f"XM-BENCH-{p:05d}",
            }
        )
    (out_dir / FILES_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(datasets):
        pub = pubs[owners[i]]
        name = f"{pub['short_name']}-ds{i:06d}"
        entry = {
            "index": i,
            "id": _uuid(rng),
            "short_name": name,
            "publisher": pub["short_name"],
            "file": f"{name}.xml",
            "kind": kinds[i],
            "planned_activities": counts[i],
            "identifier_prefix": f"{pub['iati_identifier']}-DS{i:06d}",
            "generation": 0,
        }
        _write_dataset(out_dir, pool, entry, seed)
        entries.append(entry)
    manifest = {
        "generator": {
            "seed": seed,
            "datasets": datasets,
            "publishers": publishers,
            "activities": activities,
            "shares": shares,
            "sigma": sigma,
            "max_activities_per_file": max_activities_per_file,
            "max_activity_kb": max_activity_kb,
            "templates": str(templates_dir),
            "template_sources": list(pool.sources),
            "valid_templates": len(pool.valid),
            "invalid_templates": len(pool.invalid),
            "changes": [],
        },
        "publishers": pubs,
        "datasets": entries,
    }
    write_manifest(out_dir, manifest)
    return manifest


def change(out_dir: Path, share: float, *, templates_dir: Path | None = None) -> list[str]:
    """Publish a new version of ``share`` of the datasets (at least one): same identifiers,
    new content, a few activities more or fewer.  Broken and organisation files are left
    alone, so every changed dataset is one that should become searchable.

    :return: the ids of the changed datasets.
    """
    manifest = read_manifest(out_dir)
    gen = manifest["generator"]
    changes = gen.setdefault("changes", [])
    generation = len(changes) + 1
    rng = random.Random(f"{gen['seed']}:change:{generation}")
    candidates = [d for d in manifest["datasets"] if d["kind"] in ACTIVITY_KINDS]
    k = min(len(candidates), max(1, round(share * len(manifest["datasets"]))))
    chosen = sorted(rng.sample(candidates, k), key=lambda d: d["index"])
    pool = load_templates(Path(templates_dir or gen["templates"]), gen["max_activity_kb"] * 1024)
    for entry in chosen:
        entry["generation"] = generation
        spread = max(1, entry["planned_activities"] // 10)
        entry["planned_activities"] = max(1, entry["planned_activities"] + rng.randint(-spread, spread))
        _write_dataset(out_dir, pool, entry, gen["seed"])
    changes.append({"generation": generation, "share": share, "datasets": [d["id"] for d in chosen]})
    write_manifest(out_dir, manifest)
    return [d["id"] for d in chosen]


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """Counts for a quick look: datasets per kind, activities, bytes, largest file."""
    datasets: Sequence[dict[str, Any]] = manifest["datasets"]
    per_kind = {kind: sum(1 for d in datasets if d["kind"] == kind) for kind in KINDS}
    sizes = sorted(d["bytes"] for d in datasets)
    return {
        "datasets": len(datasets),
        "publishers": len(manifest["publishers"]),
        "per_kind": per_kind,
        "activities": sum(d["activities"] for d in datasets if d["kind"] in ACTIVITY_KINDS),
        "bytes": sum(sizes),
        "median_bytes": sizes[len(sizes) // 2] if sizes else 0,
        "largest_bytes": sizes[-1] if sizes else 0,
        "digest": corpus_digest(manifest),
    }


def corpus_digest(manifest: dict[str, Any]) -> str:
    """One SHA-1 over every dataset's id, file name and hash (equal digests: equal corpora)."""
    digest = hashlib.sha1()
    for d in manifest["datasets"]:
        digest.update(f"{d['id']}\t{d['file']}\t{d['hash']}\n".encode())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--activities", type=int, default=5000, help="activities in total (all files)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--templates", type=Path, help=f"template corpus (default {DEFAULT_TEMPLATES} if present)")
    parser.add_argument("--invalid-share", type=float, default=0.05)
    parser.add_argument("--broken-share", type=float, default=0.02)
    parser.add_argument("--non-utf8-share", type=float, default=0.03)
    parser.add_argument("--organisation-share", type=float, default=0.01)
    parser.add_argument("--sigma", type=float, default=1.0, help="spread of the log-normal file sizes")
    parser.add_argument("--max-activities-per-file", type=int, default=5000)
    parser.add_argument("--max-activity-kb", type=int, default=256, help="leave larger template activities out")
    parser.add_argument(
        "--change",
        type=float,
        metavar="SHARE",
        help="instead of generating: publish new versions of this share of OUT_DIR's datasets",
    )
    args = parser.parse_args(argv)
    if args.change is not None:
        changed = change(args.out_dir, args.change, templates_dir=args.templates)
        print(json.dumps({"changed": len(changed), **summary(read_manifest(args.out_dir))}, indent=1))
        return 0
    manifest = generate(
        args.out_dir,
        datasets=args.datasets,
        publishers=args.publishers,
        activities=args.activities,
        seed=args.seed,
        templates_dir=args.templates,
        invalid_share=args.invalid_share,
        broken_share=args.broken_share,
        non_utf8_share=args.non_utf8_share,
        organisation_share=args.organisation_share,
        sigma=args.sigma,
        max_activities_per_file=args.max_activities_per_file,
        max_activity_kb=args.max_activity_kb,
    )
    print(json.dumps(summary(manifest), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
