"""Solr transport: this project's httpx JSON client against pysolr, into the same real SolrCloud.

Usage::

    python bench/solr_transport.py FILE_OR_FOLDER [--limit-mb 40] [--batch 500] [--repeat 3]

Every IATI file given is flattened once (untimed); its activity, transaction and budget
documents are built once as the index stage builds them (untimed).  Then, for each client
in turn and ``--repeat`` times (best run kept), the same documents are sent to the
launcher's SolrCloud (``solr/runner``) in batches of ``--batch`` documents per request,
followed by one commit: wall time, documents/s, our process's CPU seconds, and the bytes
sent.  Correctness checks on the same documents: the number of documents Solr holds
afterwards, and whether a document with control characters and a lone surrogate (which
publishers' files contain) is accepted, stored as sent after cleaning, and rejected by
neither client.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def build_documents(files: list[Path]) -> dict[str, list[dict[str, Any]]]:
    from iati_refresher.stages.flatten import iter_flat_activities
    from iati_refresher.stages.index import activity_documents, activity_identifier

    by_role: dict[str, list[dict[str, Any]]] = {"activity": [], "transaction": [], "budget": []}
    seen: dict[str, int] = {}
    for number, path in enumerate(files):
        for activity in iter_flat_activities(path):
            identifier = activity_identifier(activity)
            if not identifier:
                continue
            n = seen.get(identifier, 0)
            seen[identifier] = n + 1
            built = activity_documents(
                activity,
                document_id=f"bench-{number}",
                document_hash="h",
                occurrence=n,
                iati_xml="<iati-activity/>",
                iati_json="{}",
            )
            for role, doc in built.by_role():
                by_role[role].append(doc)
    return by_role


def send_ours(url: str, by_role: dict[str, list[dict[str, Any]]], batch: int) -> int:
    from iati_refresher.solr_client import SolrClient, _json_body

    sent = 0
    with SolrClient(url, max_retries=0, timeout_s=600) as solr:
        for role, docs in by_role.items():
            for start in range(0, len(docs), batch):
                chunk = docs[start : start + batch]
                sent += len(_json_body(chunk))
                solr.add(role, chunk)
            solr.commit(role)
    return sent


def send_pysolr(url: str, by_role: dict[str, list[dict[str, Any]]], batch: int) -> int:
    import pysolr

    sent = 0
    for role, docs in by_role.items():
        solr = pysolr.Solr(f"{url}/{role}", timeout=600, always_commit=False)
        for start in range(0, len(docs), batch):
            chunk = docs[start : start + batch]
            message = solr._build_docs(chunk)[1]  # what pysolr puts in the request body
            sent += len(message if isinstance(message, bytes) else message.encode("utf-8"))
            solr.add(chunk)
        solr.commit()
    return sent


def clear(url: str) -> None:
    from iati_refresher.solr_client import ROLES, SolrClient

    with SolrClient(url, max_retries=0, timeout_s=600) as solr:
        for role in ROLES:
            solr.delete_query(role, "*:*")
            solr.commit(role)


def counts(url: str) -> dict[str, int]:
    from iati_refresher.solr_client import ROLES, SolrClient

    with SolrClient(url, max_retries=0) as solr:
        return {role: solr.count(role) for role in ROLES}


def awkward_document_check(url: str) -> dict[str, str]:
    """A value with control characters and a lone surrogate, through each client."""
    from iati_refresher.solr_client import SolrClient, SolrError

    value = "water\x01\x0b point \ud800 repaired"
    doc = {
        "id": "awkward",
        "iati_activities_document_id": "awkward",
        "iati_activities_document_hash": "h",
        "iati_identifier": "X-AWKWARD",
        "title_narrative": [value],
    }
    results = {}
    with SolrClient(url, max_retries=0) as solr:
        try:
            solr.add("activity", [doc])
            solr.commit("activity")
            stored = solr.select("activity", 'id:"awkward"', fl="title_narrative")["response"]["docs"][0]
            results["ours"] = f"accepted, stored {stored['title_narrative'][0]!r}"
        except SolrError as exc:
            results["ours"] = f"rejected: {exc}"
        solr.delete_ids("activity", ["awkward"])
        solr.commit("activity")
    import pysolr

    try:
        pysolr.Solr(f"{url}/activity", timeout=60).add([doc], commit=True)
        with SolrClient(url, max_retries=0) as solr:
            stored = solr.select("activity", 'id:"awkward"', fl="title_narrative")["response"]["docs"][0]
        results["pysolr"] = f"accepted, stored {stored['title_narrative'][0]!r}"
    except Exception as exc:  # pysolr raises its own and encoding errors
        results["pysolr"] = f"rejected: {type(exc).__name__}: {str(exc)[:200]}"
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--limit-mb", type=float, default=40.0, help="stop adding files past this many MB")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    files: list[Path] = []
    total = 0
    for path in args.paths:
        for file in sorted(path.rglob("*.xml")) if path.is_dir() else [path]:
            if total > args.limit_mb * 1e6:
                break
            files.append(file)
            total += file.stat().st_size
    print(f"building the Solr documents of {len(files)} files ({total / 1e6:.1f} MB) ...", flush=True)
    by_role = build_documents(files)
    n_docs = sum(len(d) for d in by_role.values())
    print(f"{n_docs} documents: " + ", ".join(f"{k} {len(v)}" for k, v in by_role.items()), flush=True)

    from iati_refresher.local.solr import LocalSolrCloud

    results: dict[str, Any] = {
        "files": len(files),
        "mb": round(total / 1e6, 1),
        "documents": n_docs,
        "batch": args.batch,
        "clients": {},
    }
    with LocalSolrCloud(heap_mb=1024) as cloud:
        for name, send in (("httpx JSON (this project)", send_ours), ("pysolr 3.11 (JSON)", send_pysolr)):
            best: dict[str, Any] | None = None
            for _ in range(args.repeat):
                clear(cloud.url)
                cpu0, t0 = os.times(), time.perf_counter()
                sent = send(cloud.url, by_role, args.batch)
                wall = time.perf_counter() - t0
                cpu1 = os.times()
                run = {
                    "wall_s": round(wall, 2),
                    "docs_per_s": round(n_docs / wall),
                    "request_mb": round(sent / 1e6, 1),
                    "client_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2),
                    "solr_holds": counts(cloud.url),
                }
                if best is None or run["wall_s"] < best["wall_s"]:
                    best = run
            results["clients"][name] = best
            print(
                f"{name:28} {best['wall_s']:>7} s  {best['docs_per_s']:>7} docs/s  client CPU "
                f"{best['client_cpu_s']} s  request bodies {best['request_mb']} MB  Solr holds {best['solr_holds']}",
                flush=True,
            )
        results["awkward_document"] = awkward_document_check(cloud.url)
        for client, verdict in results["awkward_document"].items():
            print(f"control characters + lone surrogate via {client}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
