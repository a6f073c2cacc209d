"""Compare the generated configsets with IATI's production ones, field by field.

Usage (run by hand; IATI's files are read from a checkout and never committed here)::

    python solr/compare_configsets.py CHECKOUT [--markdown]

``CHECKOUT`` is a clone of IATI/datastore-solr-configs (``configsets/<name>/conf/managed-schema``).
For each collection it compares the effective definition of every field — its type's Solr
class, and indexed / stored / multiValued / docValues / required / default, each taken from
the field or else from its type — plus dynamic fields, copy fields and the request
handlers of ``solrconfig.xml``, and prints every difference.  ``--markdown`` prints the
tables of ``solr/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

OURS = Path(__file__).resolve().parent / "configsets"
COLLECTIONS = ("activity", "transaction", "budget")
PROPERTIES = ("indexed", "stored", "multiValued", "docValues", "required", "default")
DEFAULTS = {"indexed": "true", "stored": "true", "multiValued": "false", "required": "false", "default": ""}
# docValues defaults by class: Solr 9 turns them on for these unless the type says otherwise.
DOCVALUES_CLASSES = {
    "solr.StrField",
    "solr.BoolField",
    "solr.IntPointField",
    "solr.LongPointField",
    "solr.DoublePointField",
    "solr.FloatPointField",
    "solr.DatePointField",
}


def _parse(path: Path) -> ElementTree.Element:
    # Configsets are trusted local files (ours, or a checkout given on the command line).
    return ElementTree.parse(path).getroot()


def _schema_file(conf: Path) -> Path:
    for name in ("managed-schema.xml", "managed-schema", "schema.xml"):
        if (conf / name).exists():
            return conf / name
    raise SystemExit(f"no schema in {conf}")


def load(conf: Path) -> dict[str, object]:
    root = _parse(_schema_file(conf))
    # Solr accepts <fieldtype> as well as <fieldType> (production uses both).
    types = {t.get("name"): t for tag in ("fieldType", "fieldtype") for t in root.iter(tag)}

    def effective(element: ElementTree.Element) -> dict[str, str]:
        type_element = types.get(element.get("type") or "")
        cls = type_element.get("class", "?") if type_element is not None else f"undefined type {element.get('type')}"
        props = {"type": element.get("type") or "", "class": cls}
        for prop in PROPERTIES:
            value = element.get(prop)
            if value is None and type_element is not None:
                value = type_element.get(prop)
            if value is None and prop == "docValues":
                value = "true" if cls in DOCVALUES_CLASSES and cls != "solr.TextField" else "false"
            props[prop] = value if value is not None else DEFAULTS.get(prop, "")
        return props

    fields = {f.get("name"): effective(f) for f in root.iter("field")}
    dynamic = {f.get("name"): effective(f) for f in root.iter("dynamicField")}
    copies = sorted((c.get("source") or "", c.get("dest") or "") for c in root.iter("copyField"))
    config = _parse(conf / "solrconfig.xml")
    handlers = sorted(h.get("name") or "" for h in config.iter("requestHandler"))
    return {
        "fields": fields,
        "dynamic": dynamic,
        "copies": copies,
        "handlers": handlers,
        "lucene": (config.findtext("luceneMatchVersion") or "").strip(),
    }


def compare(ours: dict[str, object], theirs: dict[str, object]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    mine, prod = ours["fields"], theirs["fields"]
    assert isinstance(mine, dict) and isinstance(prod, dict)
    for name in sorted(set(mine) - set(prod)):
        found["only here"].append(f"{name} ({mine[name]['type']})")
    for name in sorted(set(prod) - set(mine)):
        found["only in production"].append(f"{name} ({prod[name]['type']})")
    for name in sorted(set(mine) & set(prod)):
        for prop in ("class", *PROPERTIES):
            if mine[name][prop] != prod[name][prop]:
                found[f"{prop} differs"].append(
                    f"{name}: here {mine[name][prop] or '-'}, production {prod[name][prop] or '-'}"
                )
    dyn_mine, dyn_prod = ours["dynamic"], theirs["dynamic"]
    assert isinstance(dyn_mine, dict) and isinstance(dyn_prod, dict)
    for name in sorted(set(dyn_mine) ^ set(dyn_prod)):
        where = "here" if name in dyn_mine else "production"
        found["dynamic field only " + where].append(f"{name} ({(dyn_mine.get(name) or dyn_prod.get(name))['type']})")
    for name in sorted(set(dyn_mine) & set(dyn_prod)):
        for prop in ("class", *PROPERTIES):
            if dyn_mine[name][prop] != dyn_prod[name][prop]:
                found["dynamic field differs"].append(
                    f"{name} {prop}: here {dyn_mine[name][prop]}, production {dyn_prod[name][prop]}"
                )
    if ours["copies"] != theirs["copies"]:
        found["copy fields differ"].append(f"here {ours['copies']}, production {theirs['copies']}")
    h_mine, h_prod = set(ours["handlers"]), set(theirs["handlers"])  # type: ignore[arg-type]
    for name in sorted(h_mine ^ h_prod):
        found["request handler only " + ("here" if name in h_mine else "in production")].append(name)
    if ours["lucene"] != theirs["lucene"]:
        found["luceneMatchVersion"].append(f"here {ours['lucene']}, production {theirs['lucene']}")
    return dict(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a clone of IATI/datastore-solr-configs")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    for collection in COLLECTIONS:
        ours = load(OURS / collection / "conf")
        theirs = load(args.checkout / "configsets" / collection / "conf")
        differences = compare(ours, theirs)
        fields = ours["fields"]
        assert isinstance(fields, dict)
        print(
            f"\n## {collection}: {len(fields)} fields here, {len(theirs['fields'])} in production"  # type: ignore[arg-type]
            if args.markdown
            else f"\n=== {collection}"
        )
        if args.markdown:
            print("\n| difference | count | fields |\n|---|---|---|")
        for kind, items in differences.items():
            if args.markdown:
                print(f"| {kind} | {len(items)} | {'; '.join(items)} |")
            else:
                print(f"{kind} ({len(items)}):")
                for item in items:
                    print(f"    {item}")
        if not differences:
            print("no differences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
