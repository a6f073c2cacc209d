"""Security properties that need no running services.

SQL parameterisation
--------------------
Every statement handed to ``execute``/``executemany`` in the package must be built only from
pieces the code itself fixes, never from a value.  The rule, checked on the source's syntax
tree (:class:`SqlRule`):

* string literals, and **module constants** (names bound once at module level to literals,
  containers of literals, or expressions of other constants: ``NOW``, ``READY``...), also
  when imported from the package module that binds them (``from iati_refresher.db.repository
  .common import NOW``);
* **lookups in a module constant** (``READY[stage]``, ``ORDER.get(stage, "...")``,
  ``STAGES[i:]``): whatever the key, the result is one of the constant's own values, or an
  error;
* local names whose every assignment (including ``+=``, ``.append()``, loop and
  comprehension targets) is itself allowed;
* f-strings, ``+``, ``str.join``, ``str.format``, ``or`` and conditional expressions over
  allowed pieces, and calls to the module's own private SQL builders (``_gating()``) whose
  returned value is allowed by the same rule.

Everything else — a function parameter, an attribute of a row, ``%``-formatting, a call to
anything else — is a violation: values go into the parameters, never into the string.  The
one exception is :mod:`iati_refresher.db.migrate`, which executes the migration files
shipped with the package (``mig.up`` / ``mig.down``).
"""

from __future__ import annotations

import ast
import json
import logging
import textwrap
from pathlib import Path

import pytest

from iati_refresher import alerts, connections
from iati_refresher.connections import ConnectionInfo, parse_connection
from iati_refresher.solr_client import SolrClient, SolrError
from iati_refresher.storage import BlobStoreConfig
from iati_refresher.validator_client import ValidatorClient
from tests.support import services

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "iati_refresher"
PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
EXECUTE = {"execute", "executemany"}
# (module, source of the statement argument) that may execute non-constant SQL, and why.
ALLOWED = {
    ("db/migrate.py", "mig.up"): "a migration file shipped with the package",
    ("db/migrate.py", "mig.down"): "a migration file shipped with the package",
}
SAFE_METHODS = {"join", "format", "strip", "lower", "upper"}
LOOKUP_METHODS = {"get", "items", "keys", "values", "index"}


def _package_constants(module: str) -> set[str]:
    """The module constants of a module of the package (``iati_refresher.x.y``), if it is one."""
    parts = module.split(".")
    if parts[0] != "iati_refresher":
        return set()
    path = PACKAGE.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        return set()
    if path not in _CONSTANTS:
        _CONSTANTS[path] = set()  # an import cycle sees no constants
        _CONSTANTS[path] = SqlRule(path.read_text()).constants
    return _CONSTANTS[path]


_CONSTANTS: dict[Path, set[str]] = {}


class SqlRule:
    """Finds statements passed to ``execute`` that are built from non-constant pieces."""

    def __init__(self, source: str):
        self.tree = ast.parse(source)
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        self.constants: set[str] = set()
        self._builder_safety: dict[str, bool] = {}
        for node in self.tree.body:  # constants of other package modules, imported by name
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = _package_constants(node.module)
                self.constants.update(a.asname or a.name for a in node.names if a.name in imported)
        changed = True
        while changed:  # constants may be built from earlier constants
            changed = False
            for node in self.tree.body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else ([node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
                )
                for target in targets:
                    if isinstance(target, ast.Name) and target.id not in self.constants and self._constant(node.value):
                        self.constants.add(target.id)
                        changed = True

    # --- module constants ------------------------------------------------------------------

    def _constant(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.constants
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return all(self._constant(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return all(k is not None and self._constant(k) for k in node.keys) and all(
                self._constant(v) for v in node.values
            )
        if isinstance(node, ast.JoinedStr):
            return all(self._constant(v.value) if isinstance(v, ast.FormattedValue) else True for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._constant(node.left) and self._constant(node.right)
        return False

    # --- expressions inside a function ---------------------------------------------------------

    def safe(self, node: ast.AST | None, env: dict[str, bool]) -> bool:
        if node is None:
            return True
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | int | float | bool) or node.value is None
        if isinstance(node, ast.Name):
            return node.id in self.constants or env.get(node.id, False)
        if isinstance(node, ast.JoinedStr):
            return all(self.safe(v.value, env) for v in node.values if isinstance(v, ast.FormattedValue))
        if isinstance(node, ast.BinOp):
            return isinstance(node.op, ast.Add) and self.safe(node.left, env) and self.safe(node.right, env)
        if isinstance(node, ast.BoolOp):
            return all(self.safe(v, env) for v in node.values)
        if isinstance(node, ast.IfExp):
            return self.safe(node.body, env) and self.safe(node.orelse, env)
        if isinstance(node, ast.Tuple | ast.List):
            return all(self.safe(e, env) for e in node.elts)
        if isinstance(node, ast.Subscript):
            return self._lookup(node.value, env)
        if isinstance(node, ast.GeneratorExp | ast.ListComp):
            inner = self._bind_comprehension(node.generators, env)
            return inner is not None and self.safe(node.elt, inner)
        if isinstance(node, ast.Call):
            return self._safe_call(node, env)
        return False

    def _lookup(self, container: ast.AST, env: dict[str, bool]) -> bool:
        """A lookup in a constant (or in something safe) yields one of its values."""
        return self.safe(container, env)

    def _safe_call(self, node: ast.Call, env: dict[str, bool]) -> bool:
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr in LOOKUP_METHODS:
                return self._lookup(func.value, env)
            if func.attr in SAFE_METHODS:
                args = [*node.args, *(k.value for k in node.keywords)]
                return self.safe(func.value, env) and all(self.safe(a, env) for a in args)
            return False
        if isinstance(func, ast.Name) and func.id in self.functions and func.id.startswith("_"):
            return self._builder_is_safe(func.id, index=None)
        return False

    def _bind_comprehension(self, generators: list[ast.comprehension], env: dict[str, bool]) -> dict[str, bool] | None:
        inner = dict(env)
        for gen in generators:
            if not self.safe(gen.iter, inner):
                return None
            for name in _names(gen.target):
                inner[name] = True
        return inner

    # --- functions ------------------------------------------------------------------------------

    def _builder_is_safe(self, name: str, index: int | None) -> bool:
        key = f"{name}[{index}]"
        if key not in self._builder_safety:
            self._builder_safety[key] = False  # recursion guard
            fn = self.functions[name]
            env = self.environment(fn)
            returns = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
            if index is not None:
                returns = [r.elts[index] if isinstance(r, ast.Tuple) else r for r in returns]
            self._builder_safety[key] = all(self.safe(r, env) for r in returns)
        return self._builder_safety[key]

    def environment(self, fn: ast.FunctionDef) -> dict[str, bool]:
        """Which local names of ``fn`` hold only allowed values (greatest fixpoint)."""
        sources: dict[str, list[tuple[ast.AST | None, int | None]]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._collect(target, node.value, sources)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                self._collect(node.target, node.value, sources)
            elif isinstance(node, ast.For):
                for name in _names(node.target):
                    sources.setdefault(name, []).append((node.iter, -1))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend")
                and isinstance(node.func.value, ast.Name)
            ):
                for arg in node.args:
                    sources.setdefault(node.func.value.id, []).append((arg, -1 if node.func.attr == "extend" else None))
        for arg in [*fn.args.args, *fn.args.kwonlyargs]:
            sources[arg.arg] = [(None, -2)]  # parameters are values
        env = dict.fromkeys(sources, True)
        changed = True
        while changed:
            changed = False
            for name, assigned in sources.items():
                ok = all(self._source_safe(value, index, env) for value, index in assigned)
                if env[name] and not ok:
                    env[name] = False
                    changed = True
        return env

    def _collect(self, target: ast.AST, value: ast.AST, sources: dict) -> None:
        if isinstance(target, ast.Name):
            sources.setdefault(target.id, []).append((value, None))
        elif isinstance(target, ast.Tuple):
            for i, element in enumerate(target.elts):
                if isinstance(element, ast.Name):
                    sources.setdefault(element.id, []).append((value, i))

    def _source_safe(self, value: ast.AST | None, index: int | None, env: dict[str, bool]) -> bool:
        if index == -2:
            return False  # a parameter
        if index == -1:
            return self.safe(value, env)  # iterated: its items are as safe as the iterable
        if index is not None:  # one element of an unpacked tuple
            if isinstance(value, ast.Tuple):
                return self.safe(value.elts[index], env)
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.functions:
                return value.func.id.startswith("_") and self._builder_is_safe(value.func.id, index)
            return False
        return self.safe(value, env)

    # --- the check ----------------------------------------------------------------------------------

    def violations(self, module: str = "") -> list[str]:
        found = []
        for fn in [n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef)]:
            env = self.environment(fn)
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                if not (isinstance(call.func, ast.Attribute) and call.func.attr in EXECUTE and call.args):
                    continue
                statement = call.args[0]
                if (module, ast.unparse(statement)) in ALLOWED:
                    continue
                if not self.safe(statement, env):
                    found.append(f"{module}:{call.lineno} {fn.name}: {ast.unparse(statement)[:80]}")
        return found


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *PLUGINS.glob("*.py")])


def test_the_repository_holds_sql_and_builds_it_only_from_constants() -> None:
    modules = sorted((PACKAGE / "db" / "repository").glob("*.py"))
    sources = {path.relative_to(PACKAGE).as_posix(): path.read_text() for path in modules}
    rules = {name: SqlRule(source) for name, source in sources.items()}
    assert {"NOW", "READY", "REVIVED_BY", "RESET_FROM"} <= set().union(*(r.constants for r in rules.values()))
    assert sum(source.count(".execute") for source in sources.values()) > 40, "the check looks at the statements"
    assert [v for name, rule in rules.items() for v in rule.violations(name)] == []


def test_no_module_of_the_package_or_plugins_builds_sql_from_values() -> None:
    found = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix() if path.is_relative_to(PACKAGE) else path.name
        found += SqlRule(path.read_text()).violations(rel)
    assert found == []


@pytest.mark.parametrize(
    "body",
    [
        "conn.execute(f\"SELECT * FROM document WHERE id = '{doc_id}'\")",
        'conn.execute("SELECT * FROM document WHERE id = \'" + doc_id + "\'")',
        "conn.execute(\"SELECT * FROM document WHERE id = '%s'\" % doc_id)",
        "conn.execute(\"SELECT * FROM document WHERE id = '{}'\".format(doc_id))",
        'sql = "SELECT * FROM document WHERE name = " + row["name"]\n    conn.execute(sql)',
        'where = "true"\n    where += f" AND id = {doc_id}"\n    conn.execute(f"SELECT 1 WHERE {where}")',
        'conds = []\n    conds.append(doc_id)\n    conn.execute(" AND ".join(conds))',
        'conn.execute(f"SELECT {_column(doc_id)} FROM document")',
        'cols = ", ".join(c for c in doc_id)\n    conn.execute(f"SELECT {cols} FROM document")',
        'conn.execute(f"SELECT * FROM {str(doc_id)}")',
    ],
)
def test_the_rule_catches_values_in_a_statement(body: str) -> None:
    source = textwrap.dedent("""
        NOW = "now()"

        def _column(name):
            return name

        def find(conn, doc_id, row):
            {body}
    """).replace("{body}", body)
    assert len(SqlRule(source).violations()) == 1


@pytest.mark.parametrize(
    "body",
    [
        'conn.execute("SELECT * FROM document WHERE id = %s", (doc_id,))',
        'conn.execute(f"SELECT {COLUMNS[stage]} FROM document WHERE t < {NOW}")',
        "conn.execute(f\"SELECT {ORDER.get(stage, 'id')} FROM document\")",
        'sets = ", ".join(f"{c} = NULL" for s in STAGES[STAGES.index(stage):] for c in COLUMNS[s])\n    '
        'conn.execute(f"UPDATE document SET {sets}")',
        'where, params = _filters(doc_id)\n    conn.execute(f"SELECT 1 WHERE {where}", params)',
        'conn.execute(f"SELECT 1 WHERE {_gating(stage)}")',
    ],
)
def test_the_rule_accepts_what_the_code_itself_fixes(body: str) -> None:
    source = textwrap.dedent("""
        NOW = "now()"
        STAGES = ("download", "validate")
        COLUMNS = {"download": "downloaded", "validate": "validation"}
        ORDER = {"download": "d.id"}

        def _filters(value):
            conds = []
            if value:
                conds.append("d.id = %(value)s")
            return (" AND ".join(conds) or "true"), {"value": value}

        def _gating(stage):
            return f"d.{COLUMNS[stage]} IS NULL AND s.stage = %(stage)s"

        def find(conn, doc_id, stage):
            {body}
    """).replace("{body}", body)
    assert SqlRule(source).violations() == []


def test_a_constant_imported_from_its_package_module_counts_and_nothing_else_does() -> None:
    source = textwrap.dedent("""
        from iati_refresher.db.repository.common import NOW, one_row
        from iati_refresher.db.repository.stage_sql import READY as WHEN_READY
        from iati_refresher.stage_specs import STAGES

        def find(conn, stage):
            conn.execute(f"SELECT 1 FROM document d WHERE {WHEN_READY[stage]} AND t < {NOW}")
            conn.execute(f"SELECT {one_row} FROM document")
            conn.execute(f"SELECT {STAGES[0]} FROM document")
    """)
    rule = SqlRule(source)
    assert {"NOW", "WHEN_READY"} <= rule.constants
    assert not {"one_row", "STAGES"} & rule.constants
    assert len(rule.violations()) == 2


# --- secrets never in reprs or error messages ------------------------------------------------------

SECRET = "pw-Zq8LmV3c"


def test_connection_and_storage_objects_do_not_show_their_secrets() -> None:
    info = parse_connection("solr", f"http://indexer:{SECRET}@solr.example.org:8983/solr?key={SECRET}")
    assert info.password == SECRET
    assert SECRET not in repr(info)
    config = BlobStoreConfig(
        backend="azure",
        connection=ConnectionInfo(
            "refresher_blob", "wasb", extra={"connection_string": f"AccountName=a;AccountKey={SECRET}"}
        ),
    )
    assert SECRET not in repr(config) and SECRET not in config.describe()
    assert SECRET not in repr(ValidatorClient("https://validator.example.org", key=SECRET))
    client = SolrClient(f"http://indexer:{SECRET}@127.0.0.1:8983/solr")
    assert SECRET not in repr(client) and SECRET not in client.base_url


def test_a_solr_or_validator_that_cannot_be_reached_is_reported_without_credentials(tmp_path) -> None:
    port = services.free_port()
    with (
        SolrClient(f"http://indexer:{SECRET}@127.0.0.1:{port}/solr", max_retries=0) as solr,
        pytest.raises(SolrError) as info,
    ):
        solr.ping("activity")
    assert info.value.kind == "connection" and SECRET not in str(info.value)
    document = tmp_path / "a.xml"
    document.write_bytes(b"<iati-activities/>")
    with ValidatorClient(f"http://127.0.0.1:{port}", key=SECRET, timeout_s=2) as validator:
        answer = validator.validate(document, meta=False)
    assert answer.status is None and answer.error and SECRET not in answer.error


TOKEN = "T0LEAK/B0LEAK/slackTokenQ4nW"


@pytest.fixture
def _no_preloaded_connections(monkeypatch):
    monkeypatch.setattr(connections, "_PRELOADED", {})


@pytest.mark.usefixtures("_no_preloaded_connections")
def test_an_unreachable_slack_webhook_is_retried_without_logging_its_token(monkeypatch, caplog, capfd) -> None:
    url = f"http://127.0.0.1:{services.free_port()}/services/{TOKEN}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_ONCALL", json.dumps({"conn_type": "slackwebhook", "password": url, "extra": {"timeout": 2}})
    )
    with caplog.at_level(logging.DEBUG):
        alerts.on_failure({"dag_id": "iati_refresh", "run_id": "scheduled__1", "reason": "task_failure"})
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "Going to retry the same request" in logged, "the Slack client did retry and log it"
    assert "/services/***" in logged
    assert "slackTokenQ4nW" not in logged


def test_connection_info_never_prints_extra_secrets() -> None:
    info = ConnectionInfo("iati_validator", host="https://v.example.org", extra={"key": SECRET})
    assert SECRET not in repr(info) and SECRET not in str(info)
