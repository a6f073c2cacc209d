"""bench/stages.py --reference: loading and running a reference checkout's own code.

The "reference" here is a tiny fake checkout written by each test (the real one is AGPL and
never part of this repository); it has the module layout and calling conventions the
harness expects, so the tests exercise the loader, the database and blob stand-ins, the
stubbing of missing third-party modules and the error messages.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from lxml import etree

PROJECT = Path(__file__).resolve().parents[2]
ACTIVITIES = b"""<?xml version="1.0" encoding="UTF-8"?>
<iati-activities version="2.03">
 <iati-activity><iati-identifier>A-1</iati-identifier></iati-activity>
 <iati-activity><iati-identifier>A-2</iati-identifier></iati-activity>
 <iati-activity><iati-identifier>A-3</iati-identifier></iati-activity>
</iati-activities>
"""

FLATTEN = """
    from lxml import etree
    import reference_only_metrics_client  # installed nowhere: the harness stubs it

    class FlattenerException(Exception):
        pass

    class Flattener:
        def process(self, path):
            root = etree.parse(path).getroot()
            if root.tag != "iati-activities":
                raise FlattenerException("Non-IATI XML")
            return [{"iati_identifier": a.findtext("iati-identifier")} for a in root.iter("iati-activity")]
"""
LAKIFY = """
    from lxml import etree
    from azure.storage.blob import BlobServiceClient
    import library.db as db
    from constants.config import config

    def process_hash_list(documents):
        conn = db.getDirectConnection()
        for file_hash, downloaded, doc_id in documents:
            service = BlobServiceClient.from_connection_string(config["STORAGE"])
            blob = service.get_blob_client(container=config["CLEAN"], blob=file_hash + ".xml")
            root = etree.fromstring(blob.download_blob().content_as_bytes())
            for activity in root.iter("iati-activity"):
                name = activity.findtext("iati-identifier")
                service.get_blob_client(container="lake", blob=f"{doc_id}/{name}.xml").upload_blob(
                    etree.tostring(activity), overwrite=True)
                service.get_blob_client(container="lake", blob=f"{doc_id}/{name}.json").upload_blob(
                    b"{}", overwrite=True)
            db.completeLakify(conn, doc_id)
"""
CLEAN = """
    from lxml import etree
    from azure.storage.blob import BlobServiceClient
    import library.db as db
    from constants.config import config

    def clean_invalid_documents(documents):
        conn = db.getDirectConnection()
        for file_hash, doc_id, index in documents:
            valid = {a["index"] for a in index if a["valid"]}
            service = BlobServiceClient.from_connection_string(config["STORAGE"])
            data = service.get_blob_client(container="source", blob=file_hash + ".xml").download_blob().readall()
            root = etree.fromstring(data)
            kept = [a for i, a in enumerate(root.findall("iati-activity")) if i in valid]
            if not kept:
                db.updateCleanError(conn, doc_id, "No valid activities")
                continue
            out = etree.Element("iati-activities")
            out.extend(kept)
            service.get_blob_client(container="clean", blob=file_hash + ".xml").upload_blob(etree.tostring(out))
            db.completeClean(conn, doc_id)
"""
SOLRIZE = """
    import pysolr
    from azure.storage.blob import BlobServiceClient
    import library.db as db
    from constants.config import config

    def process_hash_list(documents):
        conn = db.getDirectConnection()
        for file_hash, doc_id, _error in documents:
            (activities,) = db.getFlattenedActivitiesForDoc(conn, doc_id)
            service = BlobServiceClient.from_connection_string(config["STORAGE"])
            solr = pysolr.Solr("http://solr.invalid/activity_solrize/")
            for activity in activities:
                blob = service.get_blob_client(container="lake", blob=f"{doc_id}/{activity['iati_identifier']}.xml")
                solr.add([{**activity, "iati_xml": blob.download_blob().content_as_text()}])
"""
# pysolr's shape, as far as the harness needs it: add() posts through get_session()
PYSOLR = """
    import json

    class Solr:
        def __init__(self, url, **kwargs):
            self.url, self.session = url, None

        def get_session(self):
            raise AssertionError("the harness answers Solr itself")

        def add(self, docs):
            self.get_session().post(self.url + "update", data=json.dumps(docs).encode("utf-8"))
"""
DB = """
    def getDirectConnection():
        raise RuntimeError("the harness must replace the database")
"""
CONFIG = """
    import os
    config = {"STORAGE": os.getenv("STORAGE_CONNECTION", ""), "CLEAN": os.getenv("CLEAN_CONTAINER", "clean")}
"""


def _load_stages() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_stages", PROJECT / "bench" / "stages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stages = _load_stages()


def write_checkout(root: Path, **overrides: str) -> Path:
    """A fake reference checkout; ``overrides`` (``library__flatten=...``) replace module sources."""
    sources = {
        "library/__init__.py": "",
        "library/flatten.py": FLATTEN,
        "library/lakify.py": LAKIFY,
        "library/clean.py": CLEAN,
        "library/solrize.py": SOLRIZE,
        "library/db.py": DB,
        "pysolr.py": PYSOLR,
        "constants/__init__.py": "",
        "constants/config.py": CONFIG,
    }
    for name, text in overrides.items():
        sources[name.replace("__", "/") + ".py"] = text
    for name, text in sources.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def forget_reference_modules() -> Iterator[None]:
    """Each test imports its own fake checkout: drop what the previous one imported."""
    path_before = list(sys.path)
    yield
    sys.path[:] = path_before
    own = ("library", "constants", "pysolr", "reference_only_metrics_client")
    for name in [m for m in sys.modules if m.split(".")[0] in own]:
        del sys.modules[name]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "activities.xml"
    path.write_bytes(ACTIVITIES)
    return path


def test_a_missing_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(stages.ReferenceLayoutError, match="no such directory"):
        stages.reference_src(tmp_path / "nowhere")


def test_a_checkout_without_the_expected_modules_names_them(tmp_path: Path) -> None:
    (tmp_path / "src" / "library").mkdir(parents=True)
    (tmp_path / "src" / "library" / "flatten.py").write_text("", encoding="utf-8")
    with pytest.raises(stages.ReferenceLayoutError) as info:
        stages.reference_src(tmp_path)
    message = str(info.value)
    assert "library/lakify.py" in message and "library/clean.py" in message and "constants/config.py" in message
    assert "library/flatten.py" not in message


def test_the_src_directory_is_found_from_the_checkout_or_given_directly(tmp_path: Path) -> None:
    root = write_checkout(tmp_path / "refresher")
    assert stages.reference_src(root) == root / "src"
    assert stages.reference_src(root / "src") == root / "src"


def test_flatten_runs_the_references_flattener_with_a_missing_module_stubbed(tmp_path: Path, source: Path) -> None:
    src = stages.reference_src(write_checkout(tmp_path / "ref"))
    result = stages.run_reference_stage("flatten", src, str(source), 3)
    assert result["activities"] == 3
    assert result["stubbed_modules"] == ["reference_only_metrics_client"]
    assert result["seconds"] >= 0 and result["peak_rss_mb"] > 0


def test_lakify_reads_and_writes_through_the_local_blob_stand_in(tmp_path: Path, source: Path) -> None:
    src = stages.reference_src(write_checkout(tmp_path / "ref"))
    result = stages.run_reference_stage("lakify", src, str(source), 3)
    assert result["activities"] == 3
    serialised = [etree.tostring(a) for a in etree.fromstring(ACTIVITIES).iter("iati-activity")]
    assert result["output_bytes"] == sum(len(x) for x in serialised) + 3 * len(b"{}")
    lake = stages.FakeBlobService.root
    assert not lake.exists(), "the reference's output lives in a temporary directory, removed afterwards"


def test_clean_keeps_every_other_activity(tmp_path: Path, source: Path) -> None:
    src = stages.reference_src(write_checkout(tmp_path / "ref"))
    result = stages.run_reference_stage("clean", src, str(source), 3)
    assert result["output_bytes"] > 0
    assert stages.FakeBlobService.written and len(stages.FakeBlobService.written) == 1


def test_a_failure_the_reference_records_in_its_database_is_reported(tmp_path: Path, source: Path) -> None:
    src = stages.reference_src(write_checkout(tmp_path / "ref"))
    empty = tmp_path / "no-activities.xml"
    empty.write_bytes(b'<iati-activities version="2.03"/>')
    with pytest.raises(stages.ReferenceRunError, match="updateCleanError"):
        stages.run_reference_stage("clean", src, str(empty), 0)  # a report with no valid activity


def test_a_different_layout_names_what_is_missing(tmp_path: Path, source: Path) -> None:
    src = stages.reference_src(write_checkout(tmp_path / "ref", library__flatten="def flatten(path):\n    return []\n"))
    with pytest.raises(stages.ReferenceLayoutError, match="has no Flattener"):
        stages.run_reference_stage("flatten", src, str(source), 3)


def test_configuration_read_at_import_points_to_reference_env(tmp_path: Path, source: Path) -> None:
    config = 'import os\nconfig = {"STORAGE": os.environ["REFERENCE_ONLY_SETTING"]}\n'
    src = stages.reference_src(write_checkout(tmp_path / "ref", constants__config=config))
    with pytest.raises(stages.ReferenceLayoutError, match="--reference-env"):
        stages.run_reference_stage("lakify", src, str(source), 3)


def test_a_missing_module_of_the_checkout_itself_is_not_stubbed(tmp_path: Path, source: Path) -> None:
    lakify = LAKIFY.replace("import library.db as db", "import library.missing_helper as db")
    src = stages.reference_src(write_checkout(tmp_path / "ref", library__lakify=lakify))
    with pytest.raises(stages.ReferenceLayoutError, match=r"library\.missing_helper"):
        stages.run_reference_stage("lakify", src, str(source), 3)


def test_measure_runs_the_reference_in_a_subprocess_with_its_environment(tmp_path: Path, source: Path) -> None:
    config = 'import os\nconfig = {"STORAGE": os.environ["REFERENCE_ONLY_SETTING"], "CLEAN": "clean"}\n'
    src = stages.reference_src(write_checkout(tmp_path / "ref", constants__config=config))
    env_file = tmp_path / "reference.env"
    env_file.write_text(
        "# the reference's settings\nexport REFERENCE_ONLY_SETTING='UseDevelopmentStorage=true'\n", encoding="utf-8"
    )
    reference = {"src": src, "python": sys.executable, "env": stages.load_env_file(env_file)}
    result = stages.measure("lakify", source, 3, 1, reference=reference)
    assert result["activities"] == 3
    with pytest.raises(RuntimeError, match="REFERENCE_ONLY_SETTING"):
        stages.measure("lakify", source, 3, 1, reference={**reference, "env": {}})


def test_env_files_are_read_as_key_value_lines(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\n# comment\n\nexport B=\"two words\"\nC='x=y'\nnot a setting\n", encoding="utf-8")
    assert stages.load_env_file(path) == {"A": "1", "B": "two words", "C": "x=y"}


def test_the_cli_refuses_a_bad_checkout_before_running_anything(tmp_path: Path, capsys) -> None:
    assert stages.main([str(tmp_path), "--reference", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_serialising_solr_counts_what_would_be_sent() -> None:
    solr = stages.SerialisingSolr()
    assert list(solr.iter_ids("activity", "*:*")) == []
    assert solr.add("activity", [{"id": "a", "title": "\u00e9t\u00e9"}, {"id": "b"}]) == 2
    assert solr.documents == 2
    assert solr.request_bytes == len(
        json.dumps(
            [{"id": "a", "title": "\u00e9t\u00e9"}, {"id": "b"}], ensure_ascii=False, separators=(",", ":")
        ).encode()
    )


def test_index_runs_the_reference_solrize_on_input_from_its_own_flatten_and_lakify(
    tmp_path: Path, source: Path
) -> None:
    root = write_checkout(tmp_path / "refresher")
    result = stages.run_reference_stage("index-docs", stages.reference_src(root), str(source), 3)
    assert result["requests"] == 3  # one add per activity, each answered by the recorder
    assert result["request_bytes"] > len(b"<iati-activity>") * 3  # the lake XML went into the bodies


def test_flatten_output_comes_back_in_jsonb_key_order() -> None:
    database = stages.RecordingDatabase('[{"bb": 1, "a": 2, "\u00e9": 3}]')
    (activities,) = database.getFlattenedActivitiesForDoc(None, "d")
    assert list(activities[0]) == ["a", "bb", "\u00e9"]
