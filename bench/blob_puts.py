"""What one small-blob upload costs, on our side and on Azurite's: the lake's limit.

Usage::

    python bench/blob_puts.py [--blobs 5000] [--kb 5] [--threads 8] [--in-memory]

Starts Azurite on loopback (as the tests do), uploads ``--blobs`` blobs of ``--kb`` kB
through the project's :class:`AzureBlobStore` (the lakify path: ``put_bytes`` from
``--threads`` threads), then reads them back.  Prints requests/s, and CPU milliseconds per
request of this process (the Azure SDK and our wrapper) and of Azurite.  Lakify writes two
blobs per activity, so ``requests/s ÷ 2`` is the lake's ceiling in activities/s on this
machine with Azurite on the same cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # tests.support: the tests' Azurite


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(store: object, azurite_pid: int, names: list[str], threads: int, work: object) -> dict[str, float]:
    own, server = time.process_time(), _cpu_s(azurite_pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, names))
    wall = time.perf_counter() - started
    n = len(names)
    return {
        "requests_per_s": round(n / wall, 1),
        "client_cpu_ms": round((time.process_time() - own) * 1000 / n, 2),
        "azurite_cpu_ms": round((_cpu_s(azurite_pid) - server) * 1000 / n, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=5000)
    parser.add_argument("--kb", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--in-memory", action="store_true", help="Azurite --inMemoryPersistence")
    args = parser.parse_args(argv)

    from iati_refresher.storage import AzureBlobStore
    from tests.support.services import Azurite

    azurite = Azurite(in_memory=args.in_memory).start()
    try:
        store = AzureBlobStore(azurite.connection_string)
        store.ensure_containers(["lake"])
        payload = os.urandom(args.kb * 1024)
        names = [f"doc{i // 100:05d}/{i:08d}.xml" for i in range(args.blobs)]
        assert azurite.proc is not None
        put = measure(store, azurite.proc.pid, names, args.threads, lambda n: store.put_bytes("lake", n, payload))
        get = measure(store, azurite.proc.pid, names, args.threads, lambda n: store.get_bytes("lake", n))
    finally:
        azurite.stop()
    print(
        f"{args.blobs} blobs of {args.kb} kB, {args.threads} threads, Azurite "
        f"{'in memory' if args.in_memory else 'on disk'}"
    )
    for what, r in (("put", put), ("get", get)):
        print(
            f"  {what}: {r['requests_per_s']} requests/s; CPU per request: this process "
            f"{r['client_cpu_ms']} ms, Azurite {r['azurite_cpu_ms']} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
