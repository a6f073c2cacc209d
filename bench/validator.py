"""Throughput and memory of the built-in XSD validator.

Usage: ``python bench/validator.py [FILE ...] [--check]``

With no files it measures ``/work/shared/corpus/real/*.xml`` and the 40 MB derived file
(``/work/shared/corpus/derived/*.xml``).  Each file is validated (``meta=True``, as the
pipeline asks for schema-invalid files) in a fresh process, so the peak RSS shown is that
file's own.  Prints one line per file and a total: MB/s, activities/s, peak RSS, status.

``--check`` also validates each 2.0x file as one whole tree and reports whether the
streamed, activity-by-activity validation found exactly the same (line, message) schema
errors (it needs memory for the whole tree, so it runs after the measurement).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CORPUS = ["/work/shared/corpus/real/*.xml", "/work/shared/corpus/derived/*.xml"]


def measure(path: str) -> dict[str, Any]:
    """Validate one file in this process and describe the run."""
    from iati_refresher.validation.builtin import validate_file

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    status, report = validate_file(path, meta=True)
    seconds = time.perf_counter() - started
    meta = report.get(report.get("fileType") or "") or []
    return {
        "file": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "seconds": seconds,
        "activities": len(meta),
        "status": status,
        "valid": report.get("valid"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mb": baseline_mb,
    }


def same_as_whole_document(path: str) -> bool | None:
    """True when streaming finds exactly the schema errors whole-tree validation finds."""
    from lxml import etree

    from iati_refresher.iati.xml import safe_parser
    from iati_refresher.validation.builtin import SUPPORTED_VERSIONS, load_schema, validate_file

    status, report = validate_file(path, meta=False)
    if not report.get("fileType") or report.get("iatiVersion") not in SUPPORTED_VERSIONS or status == 400:
        return None
    root = etree.parse(path, safe_parser()).getroot()
    schema = load_schema(report["fileType"], report["iatiVersion"])
    schema.validate(root.getroottree())
    whole = {(e.line, e.message) for e in schema.error_log}
    streamed = {
        (int(c["text"].removeprefix("At line: ")), e["message"])
        for g in report["errors"]
        for cat in g["errors"]
        if cat["category"] == "schema"
        for e in cat["errors"]
        for c in e["context"]
    }
    return whole == streamed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--check", action="store_true", help="compare with whole-document validation")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: measure one file, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0

    files = args.files or sorted(f for pattern in CORPUS for f in glob.glob(pattern))
    if not files:
        print("no files to measure", file=sys.stderr)
        return 1
    print(f"{'file':58} {'MB':>7} {'s':>6} {'MB/s':>7} {'act':>6} {'act/s':>8} {'RSS MB':>7} status")
    total_bytes = total_seconds = total_activities = 0.0
    peak = 0.0
    for path in files:
        out = subprocess.run([sys.executable, __file__, "--one", path], capture_output=True, text=True, check=True)
        run = json.loads(out.stdout)
        mb = run["bytes"] / 1e6
        seconds = max(run["seconds"], 1e-9)
        total_bytes += run["bytes"]
        total_seconds += run["seconds"]
        total_activities += run["activities"]
        peak = max(peak, run["peak_rss_mb"])
        print(
            f"{run['file'][:58]:58} {mb:7.2f} {seconds:6.2f} {mb / seconds:7.1f} {run['activities']:6d} "
            f"{run['activities'] / seconds:8.0f} {run['peak_rss_mb']:7.1f} {run['status']}"
            f"{'' if run['valid'] else ' invalid'}"
        )
    print(
        f"{'total':58} {total_bytes / 1e6:7.2f} {total_seconds:6.2f} {total_bytes / 1e6 / total_seconds:7.1f} "
        f"{int(total_activities):6d} {total_activities / total_seconds:8.0f} {peak:7.1f} (peak)"
    )
    if args.check:
        print("\nstreamed errors identical to whole-document validation:")
        for path in files:
            print(f"  {os.path.basename(path)}: {same_as_whole_document(path)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
    sys.exit(main())
