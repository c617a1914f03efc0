"""Each shipped configuration of a real screen in ../shared/data runs the whole pipeline offline.

Training and the text length are shortened (``QUICK``); everything else is the shipped file.
The four runs start once per module, two at a time (each is mostly one job after another, so two
share the two cores), in projects of their own; each test checks its own run. Skipped where
../shared/data is absent (outside users).
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_tools import REPO, copy_workflow, snakemake, write_config

pytestmark = pytest.mark.slow

QUICK = {"train": {"epochs": 3, "patience": 3, "pretrain_epochs": 1, "hidden": 16},
         "embed": {"text_max_length": 16}}
CONFIGS = ("jurkat_tcr", "carpool_thp1", "papalexi2021", "norman_devel")  # longest first
PARALLEL = 2


def run_config(base: Path, shared_data: Path, name: str) -> tuple[subprocess.CompletedProcess, float]:
    """The shipped config ``name`` with QUICK on top, in a project of its own under ``base``."""
    root = copy_workflow(base / name / "main", shared=shared_data.parent)
    quick = write_config(root, QUICK, "quick.yaml")
    start = time.monotonic()
    result = snakemake(root, "--configfile", f"workflow/configs/{name}.yaml", quick, check=False)
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, tuple]:
    """Project, Snakemake result and seconds of each config that a selected test names (test_<config>...)."""
    base = tmp_path_factory.mktemp("real")
    wanted = [name for name in CONFIGS if any(item.name.startswith(f"test_{name}") for item in request.session.items)]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {name: pool.submit(run_config, base, shared_data, name) for name in wanted}
    return {name: (base / name / "main", *future.result()) for name, future in futures.items()}


def results_of(runs: dict, name: str) -> Path:
    """The results folder of config ``name``; AssertionError with the tail of its Snakemake output if it failed."""
    root, result, seconds = runs[name]
    assert result.returncode == 0, (f"{name} failed after {seconds:.0f} s ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    config = yaml.safe_load((REPO / "workflow" / "configs" / f"{name}.yaml").read_text())
    return root / "results" / config["run"]


def read(results, rel: str) -> pd.DataFrame:
    return pd.read_csv(results / rel, sep="\t", keep_default_na=False)


def common_checks(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = read(results, "evaluate/metrics.tsv")
    assert {"grape", "mean", "no_change"} <= set(metrics["model"])
    assert (results / "report" / "summary.md").stat().st_size > 0
    mapping = read(results, "annotate/mapping.tsv")
    return metrics, mapping


def test_papalexi2021(runs):
    results = results_of(runs, "papalexi2021")
    report = json.loads((results / "preflight" / "preflight.json").read_text())
    assert "counts" in json.dumps(report).lower()
    metrics, mapping = common_checks(results)
    measured = mapping.loc[mapping["var_name"] != ""]
    assert len(measured) == 299
    split = read(results, "split/split.tsv")
    assert set(split.loc[split["split"] == "test", "subgroup"]) == {"unseen_single"}


def test_jurkat_tcr_two_contexts(runs):
    results = results_of(runs, "jurkat_tcr")
    metrics, _ = common_checks(results)
    assert {"stimulated", "unstimulated"} <= set(metrics["context"])
    pred = pd.read_csv(results / "evaluate" / "per_condition.tsv", sep="\t")
    assert set(pred["context"]) == {"stimulated", "unstimulated"}


def test_carpool_thp1_leaves_guide_features_out(runs):
    results = results_of(runs, "carpool_thp1")
    metrics, mapping = common_checks(results)
    excluded = mapping.loc[mapping["status"] == "excluded", "dataset_name"]
    assert "Cas13d" in set(excluded) and "DOT1L_g1:EP300_g2" in set(excluded)
    assert len(excluded) == 241  # 240 guide pairs and Cas13d
    nodes = read(results, "describe/descriptions.tsv")["gene"]
    assert not set(nodes) & set(excluded)
    split = read(results, "split/split.tsv")
    assert set(split.loc[split["split"] == "test", "subgroup"]) == {"combo_seen2"}
    assert {"additive", "mean_doubles"} <= set(metrics["model"])  # the config asks for the mean of the doubles


def test_norman_devel(runs):
    results = results_of(runs, "norman_devel")
    metrics, mapping = common_checks(results)
    record = json.loads((results / "dataset" / "provenance.json").read_text())
    assert record["cells"] == 3375 and record["genes"] == 500 and record["subset"] == {"dataset": "norman19"}
    descriptions = read(results, "describe/descriptions.tsv")
    assert (descriptions["source"] == "table").sum() > 300  # RefSeq summaries, by Entrez id or symbol
    split = read(results, "split/split.tsv")
    assert split.loc[split["condition"] == "CEBPE+RUNX1T1", "subgroup"].item() == "combo_seen0"
    assert "additive" in set(metrics["model"])
    assert "Test conditions: 17" in (results / "report" / "summary.md").read_text()
