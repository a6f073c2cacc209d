"""Compare the Solr documents this project builds with the reference refresher's, file by file.

    python bench/compare_reference.py CORPUS --reference CHECKOUT [--reference-python EXE]
                                      [--reference-env FILE] [--show N] [--json OUT]

For every ``*.xml`` file under ``CORPUS`` (recursively) both sides build the documents they
would send to Solr's ``activity``, ``transaction`` and ``budget`` collections from the same
bytes, treating the file as the clean file (every activity valid):

* **reference**: the checkout's own ``library.flatten``, ``library.lakify`` and
  ``library.solrize`` ``process_hash_list`` functions, run in a subprocess with
  ``--reference-python`` (its pinned requirements: lxml 4.9, pysolr 3.9).  Their I/O is
  answered locally, as ``bench/stages.py --reference`` does: blob storage is a directory,
  the database a recorder that keeps what flatten stored and gives it back to solrize the
  way PostgreSQL's ``jsonb`` column did (object keys sorted by length, then bytes), and
  ``pysolr.Solr`` a recorder of every ``add``.
* **this project**: its ``flatten_document``, ``lakify_document`` and ``index_document`` stage
  functions on a local blob store, the index stage's update requests built by this
  project's Solr client (as they would be sent) and parsed back.

Activity documents are paired by ``id`` (document id, identifier hash, occurrence);
transaction and budget documents by their activity and position.  Each pair is identical,
or different; a difference is classified field by field as one of the deviations listed in
``docs/DEVIATIONS.md`` (the class names below say which row) or as **unlisted**.  An exploded
document's ``id`` hashes the whole document, so its id difference is explained when the
document's other fields differ, each by a listed deviation.  The exit status is 1 when any
difference is unlisted (or a side failed on a file the other processed).

The checkout is never part of this repository; the ``fetch`` tool brings IATI/refresher.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stages as harness

ROLES = ("activity", "transaction", "budget")
DOCUMENT_ID = "compare-doc"
LAKE_FIELDS = ("iati_xml", "iati_json")
DATE_WORDS = ("iso_date", "value_date", "extraction_date", "_datetime")

# Deviation classes → the DEVIATIONS.md row that lists them.
LISTED = {
    "utc_offset": "Flatten: date-times with a time-zone offset are converted to UTC",
    "date_offset_day": "Flatten: xsd:date with an offset keeps the calendar day",
    "partial_date": "Flatten: partial dates fill the missing month/day with 01; a value without a year is dropped",
    "four_digit_year": "Flatten: years below 1000 always have four digits",
    "unusable_date": "Flatten: unusable dates (huge numbers, no year, machine time zones) are dropped",
    "namespace_below_activity": "Flatten: a namespace declared below the activity is named by its prefix",
    "tail_whitespace": "Lakify: the tail whitespace is never part of iati_xml",
    "xml_serialisation": "Lakify: iati_xml is written by lxml 6 (libxml2 2.14), same XML infoset",
    "duplicate_identifier": "Lakify: each activity of a duplicated identifier keeps its own XML and JSON",
    "processing_instruction": "Flatten: text split by a processing instruction joins up",
    "first_identifier": "Flatten: iati_identifier is the first identifier only",
    "encoding": "Shared: every stage reads the file in its real encoding",
    "explode_id": "Index: an exploded id hashes the document, so it follows the listed differences above",
}


# ---------------------------------------------------------------------------------------
# the reference side (runs under --reference-python)
# ---------------------------------------------------------------------------------------


class SolrRecorder:
    """``pysolr.Solr`` for one collection: every added document, in order (nothing serialised)."""

    added: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        self.role = url.rstrip("/").rsplit("/", 1)[-1].removesuffix("_solrize")

    def ping(self, *args: Any, **kwargs: Any) -> str:
        return "{}"

    def delete(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add(self, docs: Iterable[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        # pysolr's own serialisation would copy; the documents are not touched after add
        SolrRecorder.added.extend((self.role, json.loads(json.dumps(doc))) for doc in docs)


def reference_documents(src: Path, path: str, file_hash: str) -> dict[str, Any]:
    """The documents the reference's three stages send to Solr for ``path``."""
    for key, value in harness.REFERENCE_ENV.items():
        os.environ.setdefault(key, value)
    modules = {name: harness.import_reference(src, f"library.{name}")[0] for name in ("flatten", "lakify", "solrize")}
    database = harness.RecordingDatabase()
    with tempfile.TemporaryDirectory(prefix="compare-ref-") as tmp:
        harness.FakeBlobService.root = Path(tmp)
        harness.FakeBlobService.sources = {f"{file_hash}.xml": path}
        harness.FakeBlobService.written = []
        for module in modules.values():
            module.db = database
            module.BlobServiceClient = harness.FakeBlobService
        modules["solrize"].pysolr.Solr = SolrRecorder
        SolrRecorder.added = []
        downloaded = dt.datetime(2000, 1, 1)
        modules["flatten"].process_hash_list([(file_hash, downloaded, DOCUMENT_ID, None)])
        if database.flattened is None:
            return {"failed": f"flatten: {database.errors() or 'nothing stored'}"}
        modules["lakify"].process_hash_list([(file_hash, downloaded, DOCUMENT_ID)])
        modules["solrize"].process_hash_list([(file_hash, DOCUMENT_ID, None)])
    errors = list(database.errors())
    if errors:
        return {"failed": "; ".join(errors)[:500], "documents": _grouped(SolrRecorder.added)}
    return {"documents": _grouped(SolrRecorder.added)}


def _grouped(added: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each activity document with the exploded documents added after it."""
    groups: list[dict[str, Any]] = []
    for role, doc in added:
        if role == "activity":
            groups.append({"activity": doc, "transaction": [], "budget": []})
        elif groups:
            groups[-1][role].append(doc)
    return groups


# ---------------------------------------------------------------------------------------
# this project's side
# ---------------------------------------------------------------------------------------


class RequestRecorder(harness.SerialisingSolr):
    """The index stage's Solr: an empty index, every update body built by this project's
    Solr client (as it would be sent) and kept, parsed back, per collection."""

    def __init__(self) -> None:
        super().__init__()
        self.docs: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}

    def add(self, collection: str, docs: Any, commit_within_ms: int | None = None) -> int:
        sent = json.loads(self._body(list(docs)))
        self.docs[collection].extend(sent)
        self.documents += len(sent)
        return len(sent)


def our_documents(path: str, file_hash: str) -> dict[str, Any]:
    """The documents this project's clean-file → flatten → lakify → index stages send to Solr
    for ``path`` (the stage functions themselves, on a local blob store)."""
    from iati_refresher.settings import Settings
    from iati_refresher.stages.flatten import flatten_document, iter_flat_activities
    from iati_refresher.stages.index import activity_identifier, index_document
    from iati_refresher.stages.lakify import lakify_document
    from iati_refresher.storage import LocalBlobStore

    with tempfile.TemporaryDirectory(prefix="compare-ours-") as tmp:
        settings = Settings(local_blob_dir=tmp)
        blobs = LocalBlobStore(tmp)
        doc: dict[str, Any] = {"id": DOCUMENT_ID, "hash": file_hash}
        blobs.put_file(settings.clean_container, f"{file_hash}.xml", path)
        steps = [flatten_document(doc, blobs, settings)]
        if steps[0].status == "ok":
            doc["flattened_activities"] = steps[0].data["manifest"]
            steps.append(lakify_document(doc, blobs, settings))
        if steps[-1].status == "ok":
            recorder = RequestRecorder()
            steps.append(index_document(doc, blobs, recorder, settings))
        failed = next((o for o in steps if o.status != "ok"), None)
        if failed is not None:
            return {"failed": f"{failed.code}: {failed.message}"[:500], "documents": []}
        # the requests are per collection, in file order: split them by activity again
        counts = [
            {
                role: len([i for i in activity.get(f"@{role}") or [] if isinstance(i, dict)])
                for role in ("transaction", "budget")
            }
            for activity in iter_flat_activities(path)
            if activity_identifier(activity)
        ]
    groups, taken = [], dict.fromkeys(("transaction", "budget"), 0)
    for activity, count in zip(recorder.docs["activity"], counts, strict=True):
        group = {"activity": activity}
        for role in ("transaction", "budget"):
            group[role] = recorder.docs[role][taken[role] : taken[role] + count[role]]
            taken[role] += count[role]
        groups.append(group)
    return {"documents": groups}


# ---------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------

INSTANT = re.compile(r"^(-?\d+)-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$")


def _instant(value: Any) -> dt.datetime | None:
    match = INSTANT.match(value) if isinstance(value, str) else None
    if not match:
        return None
    try:
        return dt.datetime(*(int(g) for g in match.groups()[:6]))
    except ValueError:
        return None


def _date_class(ours: Any, reference: Any, today: dt.date) -> str | None:
    """The listed deviation explaining two values of a date field, or None."""
    if isinstance(ours, list) or isinstance(reference, list):
        ours_l = ours if isinstance(ours, list) else [] if ours is None else [ours]
        ref_l = reference if isinstance(reference, list) else [] if reference is None else [reference]
        classes = set()
        remaining = list(ours_l)
        for value in ref_l:
            if value in remaining:
                remaining.remove(value)
                continue
            match = next((o for o in remaining if _date_class(o, value, today)), None)
            if match is not None:
                classes.add(_date_class(match, value, today))
                remaining.remove(match)
            else:
                cls = _date_class(None, value, today)
                if cls is None:
                    return None
                classes.add(cls)
        if remaining:
            return None
        return sorted(c for c in classes if c)[0] if classes else None
    if ours is None and isinstance(reference, str):
        # dropped here: the reference filled a value without a year from today's date,
        # or wrote a year below 1000 unpadded (refused by Solr), or kept a machine time zone
        if reference.startswith(str(today.year)) or re.match(r"^\d{1,3}-", reference):
            return "unusable_date"
        return None
    if not isinstance(ours, str) or not isinstance(reference, str):
        return None
    if re.match(r"^\d{1,3}-", reference) and ours.lstrip("0") == reference.lstrip("0"):
        return "four_digit_year"
    a, b = _instant(ours), _instant(reference)
    if a is None or b is None:
        return None
    filled = ours[4:] == "-01-01T00:00:00.000Z" or ours[7:] == "-01T00:00:00.000Z"
    if a.year == b.year and filled and (b.month == today.month or b.day == today.day):
        return "partial_date"
    delta = abs((a - b).total_seconds())
    if 0 < delta <= 14 * 3600 and delta % 900 == 0:
        return "utc_offset"
    return None


def _canonical(xml: str) -> bytes | None:
    from lxml import etree

    try:
        element = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None
    return etree.tostring(element, method="c14n")


def _xml_class(ours: Any, reference: Any) -> str | None:
    if not isinstance(ours, str) or not isinstance(reference, str):
        return None
    if ours == reference.rstrip(" \t\r\n") or ours.rstrip() == reference.rstrip():
        return "tail_whitespace"
    a, b = _canonical(ours), _canonical(reference.rstrip(" \t\r\n"))
    if a is not None and a == b:
        return "xml_serialisation"
    return None


def _json_class(ours: Any, reference: Any) -> str | None:
    """iati_json of the same activity: a difference only in text that held the xml: URI."""
    if not isinstance(ours, str) or not isinstance(reference, str):
        return None
    if ours.replace("{http://www.w3.org/XML/1998/namespace}", "xml:") == reference:
        return "xml_serialisation"
    return None


def _is_date_field(name: str) -> bool:
    return any(word in name for word in DATE_WORDS)


def classify(ours: Mapping[str, Any], reference: Mapping[str, Any], context: dict[str, Any]) -> dict[str, str | None]:
    """Field → deviation class (None: unlisted) for every field whose values differ."""
    today = context["today"]
    out: dict[str, str | None] = {}
    ours_only = [k for k in ours if k not in reference]
    ref_only = [k for k in reference if k not in ours]
    # renamed fields: a Clark-form name in the reference, the publisher's prefix here
    clark = [k for k in ref_only if "{" in k]
    if clark:
        clark_values = collections.Counter(json.dumps(reference[k]) for k in clark)
        for key in list(ours_only):
            if clark_values[json.dumps(ours[key])] > 0:
                clark_values[json.dumps(ours[key])] -= 1
                out[key] = "namespace_below_activity"
                ours_only.remove(key)
        for key in clark:
            out[key] = "namespace_below_activity"
            ref_only.remove(key)
    for key in sorted(set(ours) | set(reference)):
        if key in out or key == "id":
            continue
        a, b = ours.get(key), reference.get(key)
        if a == b:
            continue
        last = context.get(f"last_{key}")
        if (
            key in LAKE_FIELDS
            and context.get("duplicated")
            and isinstance(b, str)
            and isinstance(last, str)
            and (b == last or b.rstrip() == last.rstrip() or _canonical(b.rstrip()) == _canonical(last))
        ):
            # the reference's blobs of one identifier overwrote each other: the last activity's text
            out[key] = "duplicate_identifier"
        elif key == "iati_xml":
            out[key] = _xml_class(a, b)
        elif key == "iati_json":
            out[key] = _json_class(a, b)
        elif _is_date_field(key):
            out[key] = _date_class(a, b, today)
        else:
            out[key] = context.get("explain_text", {}).get(key)
    return out


# ---------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.compared = collections.Counter()
        self.identical = collections.Counter()
        self.different = collections.Counter()
        self.only_ours = collections.Counter()
        self.only_reference = collections.Counter()
        self.classes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.unlisted: dict[str, list[str]] = collections.defaultdict(list)
        self.file_failures: list[str] = []

    def unlisted_count(self) -> int:
        return sum(len(v) for v in self.unlisted.values()) + len(self.file_failures)


def _pair_groups(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> Iterable[tuple[Any, Any]]:
    by_id = {g["activity"].get("id"): g for g in ours}
    seen = set()
    for group in reference:
        key = group["activity"].get("id")
        seen.add(key)
        yield by_id.get(key), group
    for key, group in by_id.items():
        if key not in seen:
            yield group, None


def compare_file(name: str, ours: dict[str, Any], reference: dict[str, Any], tally: Tally) -> None:
    today = dt.date.today()
    if "failed" in reference and not reference.get("documents"):
        if ours.get("documents"):
            # the reference failed the whole file where this project indexes it
            tally.file_failures.append(f"{name}: only the reference failed: {reference['failed']}")
        return
    if "failed" in ours and reference.get("documents"):
        tally.file_failures.append(f"{name}: only this project failed: {ours['failed']}")
        return
    ours_groups, ref_groups = ours.get("documents", []), reference.get("documents", [])
    identifiers = collections.Counter(g["activity"].get("iati_identifier") for g in ours_groups)
    last_of: dict[str, dict[str, Any]] = {}
    for group in ours_groups:
        last_of[group["activity"].get("iati_identifier")] = group["activity"]
    for our_group, ref_group in _pair_groups(ours_groups, ref_groups):
        if our_group is None or ref_group is None:
            for role in ROLES:
                count = len([ref_group["activity"]] if role == "activity" else ref_group[role]) if ref_group else 0
                count_ours = len([our_group["activity"]] if role == "activity" else our_group[role]) if our_group else 0
                tally.only_reference[role] += count
                tally.only_ours[role] += count_ours
            which = "reference" if our_group is None else "this project"
            doc = (ref_group or our_group)["activity"]
            tally.unlisted["activity"].append(f"{name}: activity {doc.get('id')} only built by {which}")
            continue
        identifier = our_group["activity"].get("iati_identifier")
        context = {
            "today": today,
            "duplicated": identifiers[identifier] > 1,
            "last_iati_xml": last_of[identifier].get("iati_xml"),
            "last_iati_json": last_of[identifier].get("iati_json"),
        }
        _compare_docs(name, "activity", our_group["activity"], ref_group["activity"], context, tally)
        for role in ("transaction", "budget"):
            ours_docs, ref_docs = our_group[role], ref_group[role]
            for index in range(max(len(ours_docs), len(ref_docs))):
                if index >= len(ours_docs) or index >= len(ref_docs):
                    side = "reference" if index >= len(ours_docs) else "this project"
                    (tally.only_reference if side == "reference" else tally.only_ours)[role] += 1
                    tally.unlisted[role].append(
                        f"{name}: {role} {index} of {our_group['activity'].get('id')} only built by {side}"
                    )
                    continue
                _compare_docs(name, role, ours_docs[index], ref_docs[index], context, tally)


def _compare_docs(
    name: str, role: str, ours: dict[str, Any], reference: dict[str, Any], context: dict[str, Any], tally: Tally
) -> None:
    """Count one pair of documents and classify its differences."""
    tally.compared[role] += 1
    if ours == reference:
        tally.identical[role] += 1
        return
    tally.different[role] += 1
    fields = classify(ours, reference, context)
    if role != "activity" and ours.get("id") != reference.get("id"):
        # the id hashes the document: explained only by listed differences of the document itself
        fields["id"] = "explode_id" if fields and all(fields.values()) else None
    unlisted = sorted(k for k, v in fields.items() if v is None)
    if not fields:
        unlisted = ["(same fields, different order)"]
    for cls in {v for v in fields.values() if v}:
        tally.classes[role][cls] += 1
    if unlisted:
        detail = "; ".join(f"{k}: {_first_difference(ours.get(k), reference.get(k))}" for k in unlisted[:3])
        tally.unlisted[role].append(f"{name}: {reference.get('id')}: {detail}")


def _first_difference(ours: Any, reference: Any) -> str:
    a, b = json.dumps(ours, ensure_ascii=False), json.dumps(reference, ensure_ascii=False)
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, at - 40)
    return f"ours=…{a[start : at + 60]!r} reference=…{b[start : at + 60]!r}"


def _reference_worker(argv: list[str]) -> int:
    src, path, file_hash, out = Path(argv[0]), argv[1], argv[2], argv[3]
    result = reference_documents(src, path, file_hash)
    Path(out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_reference(src: Path, python: str, env: dict[str, str], path: Path, file_hash: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = out.name
    try:
        completed = subprocess.run(
            [python, __file__, "--reference-worker", str(src), str(path), file_hash, out_path],
            env={**os.environ, **harness.REFERENCE_ENV, **env},
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if completed.returncode != 0:
            return {"failed": f"the reference harness exited {completed.returncode}: {completed.stderr[-800:]}"}
        return json.loads(Path(out_path).read_text(encoding="utf-8"))
    finally:
        os.unlink(out_path)


def print_summary(tally: Tally, files: int) -> None:
    print(f"\n{files} files compared")
    print(
        f"{'collection':<12}{'compared':>10}{'identical':>11}{'different':>11}{'listed':>9}{'unlisted':>10}"
        f"{'only ours':>11}{'only ref':>10}"
    )
    for role in ROLES:
        unlisted = len(tally.unlisted[role])
        print(
            f"{role:<12}{tally.compared[role]:>10}{tally.identical[role]:>11}{tally.different[role]:>11}"
            f"{tally.different[role] - (unlisted - tally.only_ours[role] - tally.only_reference[role]):>9}"
            f"{unlisted:>10}{tally.only_ours[role]:>11}{tally.only_reference[role]:>10}"
        )
    print("\ndifferences by listed deviation (a document can show several):")
    for role in ROLES:
        for cls, count in sorted(tally.classes[role].items(), key=lambda kv: -kv[1]):
            print(f"  {role:<12}{cls:<26}{count:>8}   {LISTED[cls]}")
    if tally.file_failures:
        print("\nfiles one side failed:")
        for line in tally.file_failures:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reference-worker"]:
        return _reference_worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument(
        "--reference", type=Path, required=True, metavar="CHECKOUT", help="a checkout of IATI/refresher"
    )
    parser.add_argument("--reference-python", default=sys.executable, help="the Python to run the reference with")
    parser.add_argument("--reference-env", type=Path, help="KEY=VALUE lines the reference's configuration needs")
    parser.add_argument("--show", type=int, default=5, help="unlisted differences to print per collection")
    parser.add_argument("--json", type=Path, help="also write the tallies here")
    args = parser.parse_args(argv)
    src = harness.reference_src(args.reference)
    env = harness.load_env_file(args.reference_env) if args.reference_env else {}
    files = sorted(p for p in args.corpus.rglob("*.xml") if p.is_file())
    tally = Tally()
    print(f"{'file':<64}{'activity documents: ours':>26}{'reference':>11}")
    for path in files:
        file_hash = hashlib.sha1(path.read_bytes()).hexdigest()
        reference = run_reference(src, args.reference_python, env, path, file_hash)
        ours = our_documents(str(path), file_hash)
        before = tally.unlisted_count()
        compare_file(path.name, ours, reference, tally)
        status = "" if tally.unlisted_count() == before else "  UNLISTED"
        ref_state = "failed" if "failed" in reference else str(len(reference.get("documents", [])))
        our_state = "failed" if "failed" in ours else str(len(ours.get("documents", [])))
        print(f"{str(path.relative_to(args.corpus))[:63]:<64}{our_state:>26}{ref_state:>11}{status}")
    print_summary(tally, len(files))
    for role in ROLES:
        for line in tally.unlisted[role][: args.show]:
            print(f"  unlisted {role}: {line}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "compared": tally.compared,
                    "identical": tally.identical,
                    "different": tally.different,
                    "classes": tally.classes,
                    "unlisted": {r: len(v) for r, v in tally.unlisted.items()},
                    "file_failures": tally.file_failures,
                },
                indent=2,
                default=dict,
            )
        )
    unlisted = tally.unlisted_count()
    print(f"\nunlisted differences: {unlisted}")
    return 1 if unlisted else 0


if __name__ == "__main__":
    sys.exit(main())
