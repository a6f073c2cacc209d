"""Build a large IATI activities file by repeating corpus activities (for memory/speed benches).

Usage: ``python bench/make_big_file.py CORPUS_DIR [--size-mb 400] [--out PATH]``

Activities are streamed from the IATI 2.x activity files under ``CORPUS_DIR/derived`` and
``CORPUS_DIR/real`` (one activity in memory at a time) and written again and again, each
pass giving identifiers a ``-rN`` suffix so they stay unique, until the file reaches the
requested size.  Without ``--out`` the file goes to a new temporary directory (never the
repository); the path is printed.  Delete it when done.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from iati_refresher.iati.xml import root_info, safe_iterparse

HEADER = b'<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03">\n'
FOOTER = b"</iati-activities>\n"


def source_files(corpus_dir: Path) -> list[Path]:
    """IATI 2.x activity files of the corpus, largest first."""
    found = []
    for path in sorted((corpus_dir / "derived").glob("*.xml")) + sorted((corpus_dir / "real").glob("*.xml")):
        tag, attrib = root_info(path)
        if tag == "iati-activities" and not attrib.get("version", "").startswith("1"):
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_size, reverse=True)


def iter_activities(path: Path, suffix: str) -> Iterator[bytes]:
    """Each activity of ``path`` serialised, its identifier given ``suffix``."""
    root = None
    for event, element in safe_iterparse(str(path), events=("start", "end"), tag=("iati-activities", "iati-activity")):
        if root is None:
            root = element
            continue
        if event != "end" or element.tag != "iati-activity":
            continue
        identifier = element.find("iati-identifier")
        if identifier is not None and identifier.text:
            identifier.text = identifier.text.strip() + suffix
        yield etree.tostring(element, encoding="utf-8", with_tail=False) + b"\n"
        element.clear(keep_tail=False)
        while element.getprevious() is not None:
            del root[0]


def build(corpus_dir: Path, size_bytes: int, out_path: Path) -> tuple[int, int]:
    """Write the file; returns (bytes, activities)."""
    sources = source_files(corpus_dir)
    if not sources:
        raise SystemExit(f"no IATI 2.x activity files under {corpus_dir}/derived or {corpus_dir}/real")
    activities = 0
    with open(out_path, "wb") as out:
        out.write(HEADER)
        repetition = 0
        while out.tell() < size_bytes:
            for path in sources:
                for data in iter_activities(path, f"-r{repetition}"):
                    out.write(data)
                    activities += 1
                    if out.tell() >= size_bytes:
                        break
                if out.tell() >= size_bytes:
                    break
            repetition += 1
        out.write(FOOTER)
        return out.tell(), activities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_dir", type=Path)
    parser.add_argument("--size-mb", type=int, default=400, help="target size in MB (10^6 bytes)")
    parser.add_argument("--out", type=Path, help="output file (default: a new temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="iati-big-")) / f"big-{args.size_mb}mb.xml"
    out.parent.mkdir(parents=True, exist_ok=True)
    size, activities = build(args.corpus_dir, args.size_mb * 1_000_000, out)
    print(f"{out}\t{size} bytes\t{activities} activities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
