"""grape.io.datasets: dataset downloads against a loopback server, safe extraction, subsets, shipped configs.

The real Norman subset in ../shared/data is used when present (skipped otherwise): its
split. The whole workflow of each shipped real configuration runs in tests/test_real_configs.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from grape.cli import main as cli_main
from grape.config import ConfigError, load_schema, validate_config
from grape.data.dataset import DatasetOptions, read_dataset
from grape.io.datasets import (
    DatasetDownloadError,
    DatasetError,
    SubsetOptions,
    check_archive,
    download,
    extract,
    sniff,
    subset_dataset,
)
from grape.io.download import RetryPolicy
from grape.stages import dataset as dataset_stage
from grape.data.split import simulation_split
from tests.conftest import REPO, SHARED_DATA
from tests.http_server import HTML_PAGE, LoopbackServer, Response, truncate
from tests.workflow_tools import copy_workflow, snakemake

FAST = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.05, timeout=1.0)
CONFIGS = REPO / "workflow" / "configs"
STANDARD = ["norman", "adamson", "replogle_k562_essential", "replogle_rpe1_essential"]


def tiny_adata(seed: int = 0) -> ad.AnnData:
    """A GEARS-style dataset: ctrl, A+ctrl, B+ctrl, A+B; cell_type; var gene_name."""
    rng = np.random.default_rng(seed)
    conditions = ["ctrl"] * 8 + ["G1+ctrl"] * 4 + ["G2+ctrl"] * 4 + ["G1+G2"] * 4
    obs = pd.DataFrame({"condition": pd.Categorical(conditions), "cell_type": "K562",
                        "batch": ["a", "b"] * 10}, index=[f"c{i}" for i in range(20)])
    var = pd.DataFrame({"gene_name": ["G1", "G2", "G3", "G4", "G5"]}, index=[f"ENSG0{i}" for i in range(5)])
    return ad.AnnData(X=rng.random((20, 5)).astype(np.float32), obs=obs, var=var)


def screen_adata(n_singles: int = 10, seed: int = 0) -> ad.AnnData:
    """A larger GEARS-style screen (singles G0..G9 with A+ctrl, a few doubles) that a split can divide."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_singles)]
    conditions = ["ctrl"] + [f"{g}+ctrl" for g in genes] + [f"{a}+{b}" for a, b in zip(genes[::2], genes[1::2])]
    labels = [c for c in conditions for _ in range(3)]
    obs = pd.DataFrame({"condition": labels, "cell_type": "K562"}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame({"gene_name": genes + ["H1", "H2"]}, index=[f"ENSG{i:05d}" for i in range(n_singles + 2)])
    return ad.AnnData(X=rng.random((len(labels), n_singles + 2)).astype(np.float32), obs=obs, var=var)


def h5ad_bytes(tmp_path: Path, adata: ad.AnnData | None = None) -> bytes:
    path = tmp_path / "made.h5ad"
    (adata if adata is not None else tiny_adata()).write_h5ad(path)
    data = path.read_bytes()
    path.unlink()
    return data


def zip_bytes(members: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], *, mode: str = "w:gz", symlink: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def h5ad_data(tmp_path_factory) -> bytes:
    return h5ad_bytes(tmp_path_factory.mktemp("h5ad"))


@pytest.fixture(scope="module")
def gears_zip(h5ad_data) -> bytes:
    """The layout of GEARS' Dataverse archives: norman/perturb_processed.h5ad beside other files."""
    return zip_bytes({"norman/go.csv": b"source,target\n", "norman/perturb_processed.h5ad": h5ad_data})


@pytest.fixture()
def server():
    with LoopbackServer() as srv:
        yield srv


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- formats


def test_sniff_names_what_a_file_is(tmp_path, gears_zip, h5ad_data):
    cases = {"a.zip": gears_zip, "a.tgz": tar_bytes({"x": b"1"}), "a.tar": tar_bytes({"x": b"1"}, mode="w"),
             "a.tbz": tar_bytes({"x": b"1"}, mode="w:bz2"), "a.h5ad": h5ad_data}
    expected = {"a.zip": "zip", "a.tgz": "tar", "a.tar": "tar", "a.tbz": "tar", "a.h5ad": "h5ad"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert sniff(tmp_path / name) == expected[name]
    refused = {"page": (HTML_PAGE, "HTML"), "pickle": (b"\x80\x04\x95\x10\x00\x00", "pickle"),
               "empty": (b"", "empty"), "text": (b"hello world", "not a zip, tar or h5ad")}
    for name, (data, reason) in refused.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=reason):
            sniff(tmp_path / name)


def test_truncated_archives_are_refused(tmp_path, gears_zip, h5ad_data):
    for name, data in {"cut.zip": gears_zip[: len(gears_zip) - 200],
                       "cut.tgz": tar_bytes({"d/perturb_processed.h5ad": h5ad_data})[:-300],
                       "cut.h5ad": h5ad_data[: len(h5ad_data) // 2]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match="truncated or corrupt"):
            check_archive(tmp_path / name)


# --------------------------------------------------------------------------- download


def test_good_archive_with_matching_checksum_is_accepted(server, tmp_path, gears_zip):
    url = server.add_file("/api/access/datafile/6154020", gears_zip)
    digest = hashlib.sha256(gears_zip).hexdigest()
    dest = tmp_path / "norman" / "archive"
    got = download(url, dest, name="norman", sha256=digest, md5=hashlib.md5(gears_zip).hexdigest(), policy=FAST)
    assert got.sha256 == digest
    assert dest.read_bytes() == gears_zip
    assert (tmp_path / "norman" / "archive.sha256").read_text() == f"{digest}  archive\n"
    assert leftovers(tmp_path) == ["archive", "archive.md5", "archive.sha256"]


@pytest.mark.parametrize("kind", ["tar.gz", "h5ad"])
def test_tar_and_bare_h5ad_are_accepted(server, tmp_path, h5ad_data, kind):
    body = tar_bytes({"adamson/perturb_processed.h5ad": h5ad_data}) if kind == "tar.gz" else h5ad_data
    url = server.add_file("/file", body)
    download(url, tmp_path / "archive", name="adamson", sha256=hashlib.sha256(body).hexdigest(), policy=FAST)
    extract(tmp_path / "archive", tmp_path / "dataset.h5ad", name="adamson")
    assert ad.read_h5ad(tmp_path / "dataset.h5ad").n_obs == 20


def test_unpinned_download_records_its_checksum(server, tmp_path, gears_zip, caplog):
    url = server.add_file("/file", gears_zip)
    with caplog.at_level(logging.WARNING, logger="grape.io.datasets"):
        got = download(url, tmp_path / "archive", name="norman", policy=FAST)
    digest = hashlib.sha256(gears_zip).hexdigest()
    assert got.sha256 == digest
    assert (tmp_path / "archive.sha256").read_text().split()[0] == digest
    assert (tmp_path / "archive.md5").read_text().split()[0] == hashlib.md5(gears_zip).hexdigest()
    assert "no checksum pinned" in caplog.text and digest in caplog.text


def _fails(server, tmp_path, url, **kwargs) -> str:
    with pytest.raises(DatasetDownloadError) as info:
        download(url, tmp_path / "archive", name="norman", policy=FAST, **kwargs)
    message = str(info.value)
    assert "norman" in message and url in message, message
    assert info.value.name == "norman" and info.value.url == url
    return message


def test_html_page_with_status_200_is_refused(server, tmp_path, gears_zip):
    url = server.add_handler("GET", "/api/access/datafile/6154020",
                             lambda request: Response(200, HTML_PAGE, "text/html; charset=utf-8"))
    message = _fails(server, tmp_path, url)
    assert "HTML" in message
    assert server.count() == FAST.retries + 1
    assert leftovers(tmp_path) == []


def test_html_page_without_content_type_is_refused(server, tmp_path):
    url = server.add_file("/file", HTML_PAGE, content_type="application/octet-stream")
    assert "HTML" in _fails(server, tmp_path, url)
    assert leftovers(tmp_path) == []


def test_forbidden_is_refused_at_once(server, tmp_path):
    """Dataverse's 403 (an HTML page): not retried, nothing written, never unpickled."""
    url = server.add_handler("GET", "/api/access/datafile/6154020",
                             lambda request: Response(403, HTML_PAGE, "text/html"))
    assert "HTTP 403" in _fails(server, tmp_path, url)
    assert server.count() == 1
    assert leftovers(tmp_path) == []


def test_truncated_archive_is_refused(server, tmp_path, gears_zip):
    """A complete answer whose archive is cut short (the server's file itself is truncated)."""
    url = server.add_file("/file", gears_zip[: len(gears_zip) // 2])
    assert "truncated or corrupt zip" in _fails(server, tmp_path, url)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_fails_then_resumes(server, tmp_path, gears_zip):
    """A body cut before its Content-Length on every attempt: a clear error, no archive; only the
    received bytes stay in archive.unverified.part, and the next run resumes them with Range."""
    url = server.add_file("/file", gears_zip)
    server.range_support = False
    server.inject("/file", *[truncate()] * (FAST.retries + 1))
    assert "truncated" in _fails(server, tmp_path, url)
    assert leftovers(tmp_path) == ["archive.unverified.part", "archive.unverified.part.json"]
    server.range_support = True
    server.inject("/file", truncate())
    server.requests.clear()
    download(url, tmp_path / "archive", name="norman", sha256=hashlib.sha256(gears_zip).hexdigest(), policy=FAST)
    assert any("Range" in r.headers for r in server.requests)
    assert (tmp_path / "archive").read_bytes() == gears_zip


def test_checksum_mismatch_is_refused(server, tmp_path, gears_zip):
    url = server.add_file("/file", gears_zip)
    wrong = "0" * 64
    message = _fails(server, tmp_path, url, sha256=wrong)
    assert wrong in message and hashlib.sha256(gears_zip).hexdigest() in message
    assert server.count() == 1  # the same bytes would come again: not retried
    assert leftovers(tmp_path) == []
    assert "md5" in _fails(server, tmp_path, url, md5="0" * 32)
    assert leftovers(tmp_path) == []


def test_pickle_and_archive_without_h5ad_are_refused(server, tmp_path):
    url = server.add_file("/pickle", b"\x80\x04\x95" + b"\x00" * 100)
    assert "pickle" in _fails(server, tmp_path, url)
    url = server.add_file("/zip", zip_bytes({"norman/cell_graphs.pkl": b"\x80\x04"}))
    assert "no member 'perturb_processed.h5ad'" in _fails(server, tmp_path, url)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- extract


def test_extract_streams_only_the_member(tmp_path, gears_zip, h5ad_data):
    (tmp_path / "archive").write_bytes(gears_zip)
    found = extract(tmp_path / "archive", tmp_path / "out" / "dataset.h5ad", name="norman")
    assert found.name == "norman/perturb_processed.h5ad"
    assert (tmp_path / "out" / "dataset.h5ad").read_bytes() == h5ad_data
    assert leftovers(tmp_path / "out") == ["dataset.h5ad"]
    adata = read_dataset(tmp_path / "out" / "dataset.h5ad", options=DatasetOptions())
    assert adata.obs["condition"].nunique() == 4


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (lambda h: zip_bytes({"../perturb_processed.h5ad": h}), r"'\.\.'"),
        (lambda h: zip_bytes({"/tmp/perturb_processed.h5ad": h}), "absolute path"),
        (lambda h: zip_bytes({"norman/perturb_processed.h5ad": b"/etc/passwd"},
                             symlinks=("norman/perturb_processed.h5ad",)), "symbolic link"),
        (lambda h: tar_bytes({}, symlink=("norman/perturb_processed.h5ad", "/etc/passwd")), "link or special"),
        (lambda h: zip_bytes({"a/perturb_processed.h5ad": h, "b/perturb_processed.h5ad": h}), "2 members"),
        (lambda h: zip_bytes({"norman/perturb_processed.h5ad": b"not hdf5 at all"}), "not an HDF5"),
    ],
    ids=["dotdot", "absolute", "zip-symlink", "tar-symlink", "twice", "not-hdf5"],
)
def test_extract_refuses_unsafe_or_wrong_members(tmp_path, h5ad_data, archive, reason):
    (tmp_path / "archive").write_bytes(archive(h5ad_data))
    with pytest.raises(DatasetError, match=reason) as info:
        extract(tmp_path / "archive", tmp_path / "out" / "dataset.h5ad", name="norman")
    assert "dataset 'norman'" in str(info.value)
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []
    assert not (tmp_path.parent / "perturb_processed.h5ad").exists()


def test_extract_detects_a_corrupt_member(tmp_path, h5ad_data):
    data = bytearray(zip_bytes({"d/perturb_processed.h5ad": h5ad_data}))
    data[200] ^= 0xFF  # inside the compressed member: the CRC no longer matches
    (tmp_path / "archive").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="norman"):
        extract(tmp_path / "archive", tmp_path / "out" / "dataset.h5ad", name="norman")
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


def test_member_may_be_a_full_path(tmp_path, h5ad_data):
    (tmp_path / "archive").write_bytes(zip_bytes({"a/perturb_processed.h5ad": h5ad_data,
                                                  "b/perturb_processed.h5ad": b"x"}))
    found = extract(tmp_path / "archive", tmp_path / "d.h5ad", name="x", member="a/perturb_processed.h5ad")
    assert found.name == "a/perturb_processed.h5ad"


# --------------------------------------------------------------------------- subset


def test_subset_keeps_matching_cells():
    adata = tiny_adata()
    kept = subset_dataset(adata, {"batch": "a", "condition": ["ctrl", "G1+G2"]})
    assert kept.n_obs == 6 and set(kept.obs["batch"]) == {"a"}
    assert list(kept.obs["condition"].cat.categories) == ["G1+G2", "ctrl"]


@pytest.mark.parametrize(
    ("subset", "message"),
    [({"dataset": "norman19"}, "obs column 'dataset', which is absent"),
     ({"batch": "z"}, r"no cell has 'z' \(values: a, b\)"),
     ({"batch": "a", "condition": "G1+G2x"}, "G1\\+G2x")],
)
def test_subset_errors_name_column_and_value(subset, message):
    with pytest.raises(DatasetError, match=message):
        subset_dataset(tiny_adata(), subset, source="x.h5ad")


def test_subset_command_checks_the_contract(tmp_path):
    tiny_adata().write_h5ad(tmp_path / "in.h5ad")
    assert cli_main(["dataset", "subset", "--dataset", str(tmp_path / "in.h5ad"), "--subset", '{"batch": "b"}',
                     "--out", str(tmp_path / "out.h5ad"), "--provenance", str(tmp_path / "p.json")]) == 0
    assert ad.read_h5ad(tmp_path / "out.h5ad").n_obs == 10
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["cells"] == 10 and record["cells_in"] == 20 and record["subset"] == {"batch": "b"}
    with pytest.raises(DatasetError, match="no control cells labelled 'control'"):
        dataset_stage.subset(dataset=tmp_path / "in.h5ad", out=tmp_path / "o2.h5ad",
                             options=SubsetOptions(control="control", subset={"batch": "a"}))
    assert not (tmp_path / "o2.h5ad").exists()


def test_subset_options_are_the_dataset_section(repo):
    """The subset command takes every dataset key that opts('dataset') renders, with the schema's defaults."""
    schema = load_schema(repo / "workflow" / "schemas" / "config.schema.yaml")["properties"]["dataset"]["properties"]
    workflow_keys = {"source", "path", "name", "url", "sha256", "md5", "member", "subset"}
    import dataclasses

    fields = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
              for f in dataclasses.fields(SubsetOptions)}
    assert fields == {k: v["default"] for k, v in schema.items() if k not in workflow_keys} | {"subset": {}}


# --------------------------------------------------------------------------- shipped configurations


@pytest.fixture(scope="module")
def schema():
    return load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")


def shipped(name: str) -> dict:
    """config.yaml with a shipped configuration on top, as `--configfile` merges them."""
    def merge(base: dict, top: dict) -> dict:
        for key, value in top.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and value else value
        return base

    return merge(yaml.safe_load((REPO / "config.yaml").read_text()), yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))


@pytest.mark.parametrize("name", STANDARD)
def test_standard_configs_name_url_and_checksum_keys(schema, name):
    config = validate_config(shipped(name), schema)
    dataset = config["dataset"]
    assert dataset["source"] == "download" and dataset["name"] == name
    assert dataset["url"].startswith("https://dataverse.harvard.edu/api/access/datafile/")
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["dataset"]
    assert "sha256" in raw and "md5" in raw  # recorded, null until pinned (see the comment there)
    assert config["annotate"]["source"] != "demo" and config["train"]["ablations"] == []


def test_urls_live_in_configs_not_code():
    for path in (REPO / "grape").rglob("*.py"):
        assert not re.search(r"https?://\S*dataverse", path.read_text(), flags=re.I), path.name


def test_user_config_validates_with_a_file(schema, tmp_path):
    config = shipped("user_h5ad")
    with pytest.raises(ConfigError, match="dataset.path: file not found"):
        validate_config(config, schema, base_dir=tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_screen.h5ad").write_bytes(b"")
    validate_config(config, schema, base_dir=tmp_path)


def test_download_needs_a_url(schema):
    with pytest.raises(ConfigError, match="url"):
        validate_config({"dataset": {"source": "download"}}, schema)
    with pytest.raises(ConfigError, match="dataset.sha256"):
        validate_config({"dataset": {"source": "download", "url": "https://x.org/f", "sha256": "abc"}}, schema)


def test_workflow_downloads_extracts_and_reads_a_gears_archive(tmp_path, server):
    """The dataset rules of norman.yaml against the loopback server: download, extract, split."""
    root = copy_workflow(tmp_path / "wf")
    gears_zip = zip_bytes({"norman/perturb_processed.h5ad": h5ad_bytes(tmp_path, screen_adata())})
    url = server.add_file("/api/access/datafile/6154020", gears_zip)
    config = yaml.safe_load((CONFIGS / "norman.yaml").read_text())
    config["dataset"]["url"] = url
    config["dataset"]["sha256"] = hashlib.sha256(gears_zip).hexdigest()
    config["download"] = {"retries": 1, "backoff": 0.01, "timeout": 5.0}
    (root / "test.yaml").write_text(yaml.safe_dump(config))
    snakemake(root, "results/norman/split/split.tsv", "--configfile", "test.yaml")
    base = root / "resources" / "datasets" / "norman"
    assert leftovers(base) == ["archive", "archive.md5", "archive.sha256", "dataset.h5ad", "dataset.json"]
    assert json.loads((base / "dataset.json").read_text())["member"] == "norman/perturb_processed.h5ad"
    split = pd.read_csv(root / "results" / "norman" / "split" / "split.tsv", sep="\t")
    assert len(split) == 15 and set(split["split"]) == {"train", "val", "test"}
    assert server.count("/api/access/datafile/6154020") == 1


# --------------------------------------------------------------------------- the real Norman subset


@pytest.fixture(scope="module")
def norman_devel() -> ad.AnnData:
    path = SHARED_DATA / "perturbench_devel.h5ad"
    if not path.is_file():
        pytest.skip(f"real development data not present at {path} (outside users do not have it)")
    config = yaml.safe_load((CONFIGS / "norman_devel.yaml").read_text())["dataset"]
    options = SubsetOptions(**{k: v for k, v in config.items() if k not in {"source", "path"}})
    adata = subset_dataset(ad.read_h5ad(path), options.subset, source=str(path))
    return adata


def test_norman_devel_subset_and_split(norman_devel):
    """Doubles whose singles are absent (CEBPE+RUNX1T1 has neither) still get a split and a subgroup."""
    options = DatasetOptions(control="control")
    assert norman_devel.n_obs == 3375 and norman_devel.n_vars == 500
    conditions = norman_devel.obs["condition"].astype(str).unique().tolist()
    from grape.data.dataset import condition_genes

    genes_of = lambda c: condition_genes(c, options=options)  # noqa: E731
    table = simulation_split(conditions, genes_of=genes_of, seed=1).set_index("condition")
    singles = {genes_of(c)[0] for c in conditions if len(genes_of(c)) == 1}
    orphans = [c for c in conditions if len(genes_of(c)) == 2 and not set(genes_of(c)) <= singles]
    assert len(orphans) >= 5 and "CEBPE+RUNX1T1" in orphans
    assert set(table["split"]) == {"train", "val", "test"} and len(table) == len(conditions) - 1
    for cond in orphans:  # a gene without a single is never a train gene: the double is held out
        assert table.loc[cond, "split"] in {"test", "val"}
        assert table.loc[cond, "subgroup"] in {"combo_seen0", "combo_seen1"}
