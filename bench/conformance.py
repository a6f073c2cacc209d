"""Check flatten and lakify against the reference's conformance fixtures.

Usage: ``python bench/conformance.py FIXTURES_DIR``

* ``FIXTURES_DIR/flatten/<case>.input.xml`` is flattened and compared with
  ``<case>.expected.json`` (dict keys in any order, list items in order);
  ``not-iati.input.xml`` must raise :class:`NotIatiError`.
* ``FIXTURES_DIR/lakify/<case>.input.xml``: the JSON lakify stores for each activity is
  compared with ``<case>.expected.json``.  The fixtures hold the reference's
  ``recursive_json_nest`` output *before* lakify's text replacement of the XML namespace
  by ``xml:``, so that documented replacement is applied to the expected side.

A case may pass through a deliberate deviation (docs/DEVIATIONS.md) only when its output
equals the documented alternative listed in ``DEVIATIONS`` below; nothing is skipped.
Prints one line per case, a diff per failure and ``N passed, M failed``; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iati_refresher.stages.flatten import NotIatiError, iter_flat_activities
from iati_refresher.stages.lakify import iter_lake_entries

XML_NS_CLARK = "{http://www.w3.org/XML/1998/namespace}"

# case name → function turning the reference's expected output into the output our
# documented rule gives (docs/DEVIATIONS.md).  Empty while every case matches the
# reference as is: no fixture exercises a value where our rules differ.
Alternative = Callable[[Any], Any]
DEVIATIONS: dict[str, tuple[str, Alternative]] = {}


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def _diff(expected: Any, actual: Any) -> str:
    return "\n".join(difflib.unified_diff(_pretty(expected), _pretty(actual), "expected", "actual", lineterm="", n=2))


def _judge(area: str, case: str, expected: Any, actual: Any) -> tuple[bool, str]:
    if actual == expected:
        return True, "ok"
    deviation = DEVIATIONS.get(f"{area}/{case}")
    if deviation is not None:
        reason, alternative = deviation
        documented = alternative(expected)
        if actual == documented:
            return True, f"ok (documented deviation: {reason})"
        return False, _diff(documented, actual)
    return False, _diff(expected, actual)


def check_flatten(directory: Path) -> list[tuple[str, bool, str]]:
    results = []
    for source in sorted(directory.glob("*.input.xml")):
        case = source.name.removesuffix(".input.xml")
        expected_path = directory / f"{case}.expected.json"
        if not expected_path.exists():
            try:
                list(iter_flat_activities(source))
            except NotIatiError:
                results.append((f"flatten/{case}", True, "ok (raises NotIatiError)"))
            else:
                results.append((f"flatten/{case}", False, "expected NotIatiError, nothing was raised"))
            continue
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        try:
            actual = list(iter_flat_activities(source))
        except Exception as exc:  # a crash is a failed case, reported like any other
            results.append((f"flatten/{case}", False, f"raised {type(exc).__name__}: {exc}"))
            continue
        ok, detail = _judge("flatten", case, expected, actual)
        results.append((f"flatten/{case}", ok, detail))
    return results


def check_lakify(directory: Path) -> list[tuple[str, bool, str]]:
    results = []
    for source in sorted(directory.glob("*.input.xml")):
        case = source.name.removesuffix(".input.xml")
        text = (directory / f"{case}.expected.json").read_text(encoding="utf-8")
        # lakify's documented step after recursive_json_nest (reference facts §2.8)
        expected = json.loads(text.replace(XML_NS_CLARK, "xml:"))
        try:
            entries = list(iter_lake_entries(source))
        except Exception as exc:
            results.append((f"lakify/{case}", False, f"raised {type(exc).__name__}: {exc}"))
            continue
        if len(entries) != 1:
            results.append((f"lakify/{case}", False, f"expected 1 activity, got {len(entries)}"))
            continue
        ok, detail = _judge("lakify", case, expected, json.loads(entries[0].json))
        results.append((f"lakify/{case}", ok, detail))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures_dir", type=Path, help="directory holding flatten/ and lakify/")
    args = parser.parse_args(argv)
    results = check_flatten(args.fixtures_dir / "flatten") + check_lakify(args.fixtures_dir / "lakify")
    if not results:
        print(f"no fixtures found under {args.fixtures_dir}", file=sys.stderr)
        return 2
    for name, ok, detail in results:
        if ok:
            print(f"PASS {name}: {detail}")
        else:
            print(f"FAIL {name}\n{detail}")
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
