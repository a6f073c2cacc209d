"""A real SolrCloud on loopback, from Solr's own Maven artifacts (``solr/runner``).

:class:`LocalSolrCloud` builds the runner once (``mvn -q package``: Solr 9.10.1 and its
Jetty and ZooKeeper come from Maven Central into ``~/.m2``, kept between runs), starts it
with a bounded heap, and waits for its ready line: an embedded ZooKeeper, ``nodes`` Solr
nodes, the project's configsets uploaded (trusted), and for each of ``activity``,
``transaction`` and ``budget`` the collection ``NAME_1`` with the aliases ``NAME_solrize``
(the refresher writes there) and ``NAME`` (readers), as ``solr/create-collections.sh``
creates them.  ``stop_node`` / ``start_node`` stop and restart a node on the same port (the
fault tests); the runner exits when its stdin closes, so it never outlives its parent.

Used by `make solr`, `make run` (when Java is there), the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

PROJECT_DIR = Path(__file__).resolve().parents[3]
RUNNER_DIR = PROJECT_DIR / "solr" / "runner"
CONFIGSETS_DIR = PROJECT_DIR / "solr" / "configsets"
MAIN_CLASS = "org.iatistandard.refresher.SolrRunner"
COLLECTIONS = ("activity", "transaction", "budget")


class SolrUnavailable(RuntimeError):
    """Java or Maven is missing, the runner did not build, or Solr did not start."""


def java_available() -> str | None:
    """Why a local SolrCloud cannot run here (None when it can)."""
    if shutil.which("java") is None:
        return "no Java (install a JDK 17+, e.g. Debian's openjdk-17-jre-headless)"
    if shutil.which("mvn") is None and not (RUNNER_DIR / "target" / "classpath.txt").exists():
        return "no Maven to build the Solr runner (install maven)"
    return None


def build_runner(*, quiet: bool = True) -> list[str]:
    """Build ``solr/runner`` when its sources are newer than the jar; returns the classpath."""
    target = RUNNER_DIR / "target"
    jar = target / "solr-runner-1.0.0.jar"
    classpath = target / "classpath.txt"
    sources = [RUNNER_DIR / "pom.xml", *RUNNER_DIR.glob("src/**/*")]
    newest = max(p.stat().st_mtime for p in sources if p.is_file())
    if not (jar.exists() and classpath.exists() and jar.stat().st_mtime >= newest):
        reason = java_available()
        if reason:
            raise SolrUnavailable(reason)
        done = subprocess.run(
            ["mvn", "-B", *(["-q"] if quiet else []), "package", "-DskipTests"],
            cwd=RUNNER_DIR,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SolrUnavailable(f"building solr/runner failed: {(done.stdout + done.stderr)[-3000:]}")
    return [str(jar), *classpath.read_text().strip().split(os.pathsep)]


class LocalSolrCloud:
    """One SolrCloud of ours; ``url`` is the first node's base URL (``http://127.0.0.1:P/solr``)."""

    def __init__(
        self,
        *,
        nodes: int = 1,
        heap_mb: int = 512,
        base_dir: Path | None = None,
        configsets: Path = CONFIGSETS_DIR,
        log_file: Path | None = None,
    ):
        self.nodes_wanted = nodes
        self.heap_mb = heap_mb
        self.base_dir = base_dir
        self.configsets = configsets
        self.log_file = log_file
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._own_dir: str | None = None

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def node_urls(self) -> list[str]:
        return list(self.info["nodes"])

    def start(self, timeout_s: float = 300) -> LocalSolrCloud:
        classpath = build_runner()
        if self.base_dir is None:
            self._own_dir = tempfile.mkdtemp(prefix="solrcloud-")
            self.base_dir = Path(self._own_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file or (self.base_dir / "runner.log")
        log: IO[str] = open(log_path, "a")  # noqa: SIM115 - the runner writes it while it runs
        self.proc = subprocess.Popen(
            [
                "java",
                f"-Xmx{self.heap_mb}m",
                "-XX:+UseSerialGC",
                "-Djava.net.preferIPv4Stack=true",
                "-DmetricsEnabled=true",  # MiniSolrCloudCluster turns Solr's metrics off unless asked
                "-cp",
                os.pathsep.join(classpath),
                MAIN_CLASS,
                "--configsets",
                str(self.configsets),
                "--base-dir",
                str(self.base_dir / "cluster"),
                "--nodes",
                str(self.nodes_wanted),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        log.close()
        try:
            self.info = self._answer(timeout_s, what="SolrCloud did not start")
        except SolrUnavailable as exc:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            self.stop()
            raise SolrUnavailable(f"{exc}; the runner's log ends with:\n{tail}") from None
        return self

    def _answer(self, timeout_s: float, *, what: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        result: list[str] = []
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0]:
            raise SolrUnavailable(what)
        answer = json.loads(result[0])
        if "error" in answer:
            raise SolrUnavailable(f"{what}: {answer['error']}")
        return dict(answer)

    def _command(self, line: str, timeout_s: float = 180) -> dict[str, Any]:
        with self._lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return self._answer(timeout_s, what=f"the Solr runner did not answer {line!r}")

    def stop_node(self, index: int = 0) -> None:
        self._command(f"stop {index}")

    def start_node(self, index: int = 0) -> None:
        self._command(f"start {index}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the runner shuts the cluster down when its input ends
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __enter__(self) -> LocalSolrCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`make solr`: a SolrCloud for you, in the foreground, until Ctrl-C."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m iati_refresher.local.solr", description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--heap-mb", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=PROJECT_DIR / ".run" / "solr", help="data (emptied first)")
    args = parser.parse_args(argv)
    reason = java_available()
    if reason:
        print(f"make solr: {reason}")
        return 1
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    print("building solr/runner and starting SolrCloud (the first time Maven downloads Solr 9.10.1) ...", flush=True)
    cloud = LocalSolrCloud(nodes=args.nodes, heap_mb=args.heap_mb, base_dir=args.dir)
    try:
        cloud.start()
    except SolrUnavailable as exc:
        print(f"make solr: {exc}")
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(
        f"SolrCloud at {cloud.url} ({args.nodes} node{'s' if args.nodes > 1 else ''}, heap {args.heap_mb} MB, "
        f"embedded ZooKeeper {cloud.info['zk']})"
    )
    print("collections: " + ", ".join(f"{n}_1 (aliases {n}, {n}_solrize)" for n in COLLECTIONS))
    print(f"""use it:  export AIRFLOW_CONN_SOLR='{{"conn_type": "iati_solr", "host": "{cloud.url}"}}'""")
    print(f"search:  curl '{cloud.url}/activity/select?q=*:*&rows=3'")
    print("Ctrl-C stops it.", flush=True)
    try:
        stopping.wait()
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
