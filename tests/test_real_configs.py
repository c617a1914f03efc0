"""Each shipped configuration of a real screen in ../shared/data runs the whole pipeline offline.

Training and the text length are shortened (``QUICK``); everything else is the shipped file.
Skipped where ../shared/data is absent (outside users).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from workflow_tools import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.slow

QUICK = {"train": {"epochs": 6, "patience": 6, "pretrain_epochs": 2, "hidden": 16},
         "embed": {"text_max_length": 32}}


def run_config(tmp_path, shared_data, name: str) -> tuple[dict, object]:
    root = copy_workflow(tmp_path / "project" / "main", shared=shared_data.parent)
    (root / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    snakemake(root, "--configfile", f"workflow/configs/{name}.yaml", "quick.yaml")
    config = yaml.safe_load((REPO / "workflow" / "configs" / f"{name}.yaml").read_text())
    return config, root / "results" / config["run"]


def read(results, rel: str) -> pd.DataFrame:
    return pd.read_csv(results / rel, sep="\t", keep_default_na=False)


def common_checks(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    metrics = read(results, "evaluate/metrics.tsv")
    assert {"grape", "mean", "no_change"} <= set(metrics["model"])
    assert (results / "report" / "summary.md").stat().st_size > 0
    mapping = read(results, "annotate/mapping.tsv")
    return metrics, mapping


def test_papalexi2021(tmp_path, shared_data):
    _, results = run_config(tmp_path, shared_data, "papalexi2021")
    report = json.loads((results / "preflight" / "preflight.json").read_text())
    assert "counts" in json.dumps(report).lower()
    metrics, mapping = common_checks(results)
    measured = mapping.loc[mapping["var_name"] != ""]
    assert len(measured) == 299
    split = read(results, "split/split.tsv")
    assert set(split.loc[split["split"] == "test", "subgroup"]) == {"unseen_single"}


def test_jurkat_tcr_two_contexts(tmp_path, shared_data):
    _, results = run_config(tmp_path, shared_data, "jurkat_tcr")
    metrics, _ = common_checks(results)
    assert {"stimulated", "unstimulated"} <= set(metrics["context"])
    pred = pd.read_csv(results / "evaluate" / "per_condition.tsv", sep="\t")
    assert set(pred["context"]) == {"stimulated", "unstimulated"}


def test_carpool_thp1_leaves_guide_features_out(tmp_path, shared_data):
    _, results = run_config(tmp_path, shared_data, "carpool_thp1")
    metrics, mapping = common_checks(results)
    excluded = mapping.loc[mapping["status"] == "excluded", "dataset_name"]
    assert "Cas13d" in set(excluded) and "DOT1L_g1:EP300_g2" in set(excluded)
    assert len(excluded) == 241  # 240 guide pairs and Cas13d
    nodes = read(results, "describe/descriptions.tsv")["gene"]
    assert not set(nodes) & set(excluded)
    split = read(results, "split/split.tsv")
    assert set(split.loc[split["split"] == "test", "subgroup"]) == {"combo_seen2"}
    assert "additive" in set(metrics["model"])


def test_norman_devel(tmp_path, shared_data):
    _, results = run_config(tmp_path, shared_data, "norman_devel")
    metrics, mapping = common_checks(results)
    record = json.loads((results / "dataset" / "provenance.json").read_text())
    assert record["cells"] == 3375 and record["genes"] == 500 and record["subset"] == {"dataset": "norman19"}
    descriptions = read(results, "describe/descriptions.tsv")
    assert (descriptions["source"] == "table").sum() > 300  # RefSeq summaries, by Entrez id or symbol
    split = read(results, "split/split.tsv")
    assert split.loc[split["condition"] == "CEBPE+RUNX1T1", "subgroup"].item() == "combo_seen0"
    assert "additive" in set(metrics["model"])
    assert "Test conditions: 17" in (results / "report" / "summary.md").read_text()
