"""bench/make_corpus.py: the synthetic registry is deterministic and has the shares it was asked for."""

from __future__ import annotations

import codecs
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from lxml import etree

from iati_refresher.iati.encoding import sniff_encoding
from iati_refresher.sample.server import hash_excluding_generated_timestamp
from iati_refresher.validation.builtin import validate_file

PROJECT = Path(__file__).resolve().parents[2]
TEMPLATES = PROJECT / "tests" / "fixtures" / "bench" / "templates"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", PROJECT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


mc = _load("make_corpus")

SHARES = {"invalid_share": 0.1, "broken_share": 0.1, "non_utf8_share": 0.1, "organisation_share": 0.05}


def generate(out: Path, seed: int = 7, datasets: int = 40) -> dict:
    return mc.generate(
        out, datasets=datasets, publishers=6, activities=240, seed=seed, templates_dir=TEMPLATES, **SHARES
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    return out, generate(out)


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "files").iterdir())}


def test_the_same_arguments_give_the_same_bytes(corpus, tmp_path: Path) -> None:
    out, manifest = corpus
    again = generate(tmp_path / "again")
    assert files_of(tmp_path / "again") == files_of(out)
    assert again["datasets"] == manifest["datasets"]
    assert again["publishers"] == manifest["publishers"]
    other = generate(tmp_path / "other", seed=8)
    assert mc.corpus_digest(other) != mc.corpus_digest(manifest)


def test_each_kind_has_its_share_and_the_activities_add_up(corpus) -> None:
    out, manifest = corpus
    datasets = manifest["datasets"]
    kinds = {kind: [d for d in datasets if d["kind"] == kind] for kind in mc.KINDS}
    assert {k: len(v) for k, v in kinds.items()} == {
        "invalid": 4,
        "broken": 4,
        "non_utf8": 4,
        "organisation": 2,
        "valid": 26,
    }
    assert sum(d["activities"] for d in datasets if d["kind"] in mc.ACTIVITY_KINDS) == 240
    assert mc.summary(manifest)["activities"] == 240
    assert all(d["planned_activities"] >= 1 for d in datasets)
    for kind in ("valid", "invalid", "non_utf8"):
        for d in kinds[kind]:
            assert d["activities"] == d["planned_activities"]
            data = (out / "files" / d["file"]).read_bytes()
            assert data.count(b"<iati-activity ") == d["activities"], d["file"]
    assert len({d["id"] for d in datasets}) == len(datasets)
    assert {d["publisher"] for d in datasets} == {p["short_name"] for p in manifest["publishers"]}


def test_valid_files_validate_and_invalid_ones_keep_some_valid_activities(corpus) -> None:
    out, manifest = corpus
    for d in manifest["datasets"]:
        if d["kind"] not in ("valid", "invalid"):
            continue
        status, report = validate_file(out / "files" / d["file"], meta=True)
        flags = [a["valid"] for a in report["iati-activities"]]
        assert len(flags) == d["activities"]
        if d["kind"] == "valid":
            assert (status, report["valid"]) == (200, True), d["file"]
        else:
            assert status == 422 and not report["valid"]
            assert flags.count(False) == max(1, d["activities"] // 3), d["file"]


def test_identifiers_are_unique_and_name_the_dataset(corpus) -> None:
    out, manifest = corpus
    seen: set[str] = set()
    for d in manifest["datasets"]:
        if d["kind"] not in ("valid", "invalid", "non_utf8"):
            continue
        tree = etree.parse(str(out / "files" / d["file"]))
        identifiers = [e.text for e in tree.getroot().iter("iati-identifier")]
        assert all(i.startswith(d["identifier_prefix"]) for i in identifiers)
        assert not seen & set(identifiers)
        seen |= set(identifiers)


def test_non_utf8_files_declare_their_encoding_and_carry_accents(corpus) -> None:
    out, manifest = corpus
    for d in manifest["datasets"]:
        if d["kind"] != "non_utf8":
            continue
        path = out / "files" / d["file"]
        assert codecs.lookup(sniff_encoding(path).encoding).name == codecs.lookup(d["detail"]).name, d["file"]
        data = path.read_bytes()
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
        activities = etree.parse(str(path)).getroot().findall("iati-activity")
        assert activities and all("r\u00e9vision" in (next(a.iter("narrative")).text or "") for a in activities), (
            "the first narrative of each activity carries accented text"
        )


def test_broken_and_organisation_files(corpus) -> None:
    out, manifest = corpus
    for d in manifest["datasets"]:
        path = out / "files" / d["file"]
        if d["kind"] == "organisation":
            assert etree.parse(str(path)).getroot().tag == "iati-organisations"
        elif d["kind"] == "broken":
            assert d["detail"] in mc.BROKEN_VARIANTS
            status, report = validate_file(path, meta=False)
            assert status in (400, 422) and not report.get("valid"), d["file"]


def test_manifest_hashes_are_the_bulk_data_service_hashes(corpus) -> None:
    out, manifest = corpus
    for d in manifest["datasets"]:
        path = out / "files" / d["file"]
        assert d["hash"] == hash_excluding_generated_timestamp(path.read_bytes(), sniff_encoding(path).encoding)
        assert d["bytes"] == path.stat().st_size


def test_change_republishes_a_share_of_the_indexable_datasets(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "c")
    before = {d["id"]: d["hash"] for d in manifest["datasets"]}
    changed = mc.change(tmp_path / "c", 0.1, templates_dir=TEMPLATES)
    after = mc.read_manifest(tmp_path / "c")
    assert len(changed) == 4
    for d in after["datasets"]:
        if d["id"] in changed:
            assert d["kind"] in ("valid", "invalid", "non_utf8") and d["generation"] == 1
            assert d["hash"] != before[d["id"]]
        else:
            assert d["hash"] == before[d["id"]]
    assert after["generator"]["changes"] == [{"generation": 1, "share": 0.1, "datasets": changed}]
    # the same change on an identical corpus picks the same datasets and writes the same bytes
    generate(tmp_path / "d")
    assert mc.change(tmp_path / "d", 0.1, templates_dir=TEMPLATES) == changed
    assert files_of(tmp_path / "d") == files_of(tmp_path / "c")


def test_activity_counts_follow_the_total_and_the_cap() -> None:
    counts = mc.activity_counts(random.Random(1), 500, 20_000, sigma=1.2, cap=300)
    assert sum(counts) == 20_000
    assert min(counts) >= 1 and max(counts) <= 300
    assert len(set(counts)) > 20  # a spread of sizes, not one size for all


def test_shares_adding_up_to_more_than_everything_are_refused() -> None:
    with pytest.raises(SystemExit):
        mc.kind_plan(random.Random(1), 10, {"invalid": 0.6, "broken": 0.6})
