"""The report stage (summary and plots) and the Snakemake HTML report of a tiny demo run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grape.evaluation import report
from grape.evaluation.evaluate import summarize as summarize_metrics
from grape.evaluation.metrics import HEADLINE, METRICS
from grape.evaluation import plots
from grape.evaluation.plots import degree_by_pair, network_columns
from grape.stages import report as report_stage
from workflow_tools import TINY, TINY_ARGS, snakemake

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- stage inputs built here


def evaluation_outputs(tmp_path: Path) -> dict[str, Path]:
    """What `grape evaluate` writes, for 4 test conditions, 12 genes and three models."""
    rng = np.random.default_rng(0)
    conds = ["A+ctrl", "B+ctrl", "A+B", "C+D"]
    subgroups = ["unseen_single", "unseen_single", "combo_seen2", "combo_seen0"]
    genes = [f"g{i}" for i in range(12)]
    control = rng.uniform(1, 2, size=12)
    truth = control + rng.normal(size=(4, 12))
    layers = {"grape": truth + 0.3 * rng.normal(size=truth.shape), "no_change": np.tile(control, (4, 1)),
              "additive": truth + 0.1 * rng.normal(size=truth.shape)}
    table = ad.AnnData(X=truth, obs=pd.DataFrame({"subgroup": subgroups}, index=conds),
                       var=pd.DataFrame({"gene_name": [g.upper() for g in genes], "control_mean": control},
                                        index=genes),
                       layers=layers, obsm={"de_ranked": np.tile(np.arange(12), (4, 1))})
    table.uns["models"] = list(layers)
    table.write_h5ad(tmp_path / "test_predictions.h5ad")
    rows = []
    for model in layers:
        for cond, group in zip(conds, subgroups):
            rows.append({"model": model, "condition": cond, "subgroup": group,
                         **{m: float(rng.uniform()) for m in METRICS}})
    per = pd.DataFrame(rows)
    per.to_csv(tmp_path / "per_condition.tsv", sep="\t", index=False)
    summarize_metrics(per).to_csv(tmp_path / "metrics.tsv", sep="\t", index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({
        "grape_version": "0.1.0", "options": {"baseline_splits": ["train", "val"]},
        "baselines": {"additive": {"test_conditions": {"all_singles_seen": 1, "some_singles_seen": 0,
                                                       "no_single_seen": 3}}},
        "provenance": {"dataset": {"path": "data.h5ad", "sha256": "ab" * 32}}}))
    for variant in ("full", "no_gsl"):
        folder = tmp_path / "train" / variant
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2, 3], "train_mse": [1.0, 0.5, 0.4], "val_mse": [1.1, 0.6, 0.7],
                      "seconds": [0.1, 0.1, 0.1]}).to_csv(folder / "history.tsv", sep="\t", index=False)
        pd.DataFrame({"source": ["g0", "g1", "g2", "g3"], "target": ["g1", "g1", "g0", "g0"],
                      "weight": [0.5, 0.4, 0.9, 0.1],
                      "source_biotype": ["protein_coding", "lncRNA", "protein_coding", "miRNA"],
                      "target_biotype": ["protein_coding", "protein_coding", "lncRNA", "lncRNA"],
                      "source_type": ["coding", "noncoding", "coding", "noncoding"],
                      "target_type": ["coding", "coding", "noncoding", "noncoding"]}).to_csv(
            folder / "network.tsv", sep="\t", index=False)
    pd.DataFrame({"graph": ["learned", "prior"], "k": [5, 5], "precision": [0.3, 0.1]}).to_csv(
        tmp_path / "recovery.tsv", sep="\t", index=False)
    return {"metrics": tmp_path / "metrics.tsv", "per_condition": tmp_path / "per_condition.tsv",
            "summary": tmp_path / "metrics.json", "predictions": tmp_path / "test_predictions.h5ad",
            "history": [tmp_path / "train" / v / "history.tsv" for v in ("full", "no_gsl")]}


def test_run_writes_the_summary_and_every_plot(tmp_path):
    paths = evaluation_outputs(tmp_path)
    networks = [tmp_path / "train" / v / "network.tsv" for v in ("full", "no_gsl")]
    report_stage.run(options=report.Options(), out_dir=tmp_path / "report", networks=networks,
               recovery=tmp_path / "recovery.tsv", **paths)
    out = tmp_path / "report"
    for name in report.PLOTS.values():
        assert (out / name).read_bytes()[:8] == PNG, name
    text = (out / "summary.md").read_text()
    assert "| grape |" in text and "| additive |" in text
    assert all(f"{m} " in text for m in HEADLINE)
    assert "## pearson_delta ↑ by test subgroup" in text and "combo_seen0 (n=1)" in text
    assert "coding → noncoding" in text  # learned network by node type
    assert "| learned | 5 | 0.3000 |" in text  # the recovery table
    assert "| full | 3 | 2 | 0.6000 |" in text  # training: epochs, epoch of the lowest val_mse, that val_mse
    assert "1 test conditions with every single seen" in text


def test_run_without_networks_draws_no_network(tmp_path):
    paths = evaluation_outputs(tmp_path)
    report_stage.run(options=report.Options(plot_conditions=["A+B"], plot_genes=5), out_dir=tmp_path / "report", **paths)
    assert not (tmp_path / "report" / report.PLOTS["network"]).exists()
    assert "This run exports no learned network." in (tmp_path / "report" / "summary.md").read_text()


def test_repeated_splits_put_the_headline_on_top(tmp_path):
    """With split.seeds the summary opens with the model minus the best baseline over the splits; without, it does not."""
    paths = evaluation_outputs(tmp_path)
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    histories = {report.variant_of(p): pd.read_csv(p, sep="\t") for p in paths["history"]}
    headline = pd.DataFrame([{"model": "grape", "baseline": "additive", "subgroup": "all", "metric": "pearson_delta",
                              "gain": 0.05, "low": 0.01, "high": 0.09, "better": True, "worse": False, "splits": 3,
                              "cases": 30}])
    text = report.summarize(metrics, histories, headline=headline)
    assert text.startswith("# GRAPE run summary\n\n## Model minus best baseline over 3 splits")
    assert "| all | pearson_delta ↑ | additive | +0.0500 [+0.0100, +0.0900] | better | 3 | 30 |" in text
    assert text.index("## The run's own split") < text.index("Test conditions:")
    assert "best baseline" not in report.summarize(metrics, histories)


def test_best_value_of_each_column_is_bold(tmp_path):
    paths = evaluation_outputs(tmp_path)
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    text = report.headline_table(metrics, 3)
    overall = metrics[(metrics["subgroup"] == "all") & (metrics["metric"] == "mse")].set_index("model")["value"]
    assert f"**{overall.min():.3f}**" in text  # lower is better
    delta = metrics[(metrics["subgroup"] == "all") & (metrics["metric"] == "pearson_delta")].set_index("model")
    assert f"**{delta['value'].max():.3f}**" in text  # higher is better


def test_plot_conditions_must_be_test_conditions(tmp_path):
    paths = evaluation_outputs(tmp_path)
    with pytest.raises(ValueError, match=r"report.plot_conditions: Z\+ctrl not among the test conditions"):
        report_stage.run(options=report.Options(plot_conditions=["Z+ctrl"]), out_dir=tmp_path / "report", **paths)
    assert not (tmp_path / "report").exists()


def test_default_conditions_are_the_largest_change_per_subgroup(tmp_path):
    table = ad.read_h5ad(evaluation_outputs(tmp_path)["predictions"])
    picked = report.choose_conditions(table, [])
    assert len(picked) == 3 and {"A+B", "C+D"} <= set(picked)
    change = np.linalg.norm(table.X - table.var["control_mean"].to_numpy(), axis=1)
    singles = {"A+ctrl": change[0], "B+ctrl": change[1]}
    assert max(singles, key=singles.get) in picked


def test_delta_frames_keep_only_top_de_genes(tmp_path):
    table = ad.read_h5ad(evaluation_outputs(tmp_path)["predictions"])
    observed, predicted = report.delta_frames(table, ["A+B"], ["grape"], 5)
    assert observed.notna().sum(axis=1).tolist() == [5]
    np.testing.assert_allclose(observed.loc["A+B", "G0"], table.X[2, 0] - table.var["control_mean"].iloc[0])
    assert predicted["grape"].notna().sum(axis=1).tolist() == [5]


def test_network_table_columns_are_checked():
    good = pd.DataFrame({"source": ["a"], "target": ["b"], "weight": [1.0], "source_biotype": ["lncRNA"],
                         "target_biotype": ["protein_coding"]})
    assert network_columns(good)["target_biotype"] == "target_biotype"
    degrees = degree_by_pair({"full": good})
    assert degrees.loc[0, "pair"] == "lncRNA → protein_coding" and degrees.loc[0, "edges_per_target"] == 1.0
    with pytest.raises(ValueError, match=r"net.tsv: no source_biotype, target_biotype column"):
        network_columns(good[["source", "target", "weight"]], "net.tsv")


# --------------------------------------------------------------------------- Snakemake report, tiny demo


def embedded(html: str, rel: str) -> bytes:
    """The bytes of a result file embedded in Snakemake's report.html (a base64 data URI keyed by path)."""
    start = html.find(f'"{rel}": {{')
    assert start >= 0, f"{rel} is not in the report"
    match = re.compile(r'"data_uri": "data:[^"]*?base64,([^"]*)"').search(html, start)
    assert match, f"no data of {rel} in the report"
    return base64.b64decode(match.group(1))


def test_snakemake_report_holds_every_plot_and_table(tiny_run, tmp_path):
    """`snakemake --report` on the session's finished tiny run (the full model and its no_gsl ablation)."""
    snakemake(tiny_run, *TINY_ARGS, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    results = tiny_run / "results" / TINY["run"]
    expected = ["report/summary.md", "report/pred_vs_obs.png", "report/metric_bars.png",
                "report/training_curves.png", "report/network_degree.png", "evaluate/metrics.tsv",
                "evaluate/per_condition.tsv", "evaluate/metrics.json", "network/recovery.tsv",
                "train/full/history.tsv", "train/no_gsl/history.tsv", "train/full/network.tsv",
                "train/no_gsl/network.tsv"]
    for rel in expected:  # each result is embedded in the report byte for byte
        assert embedded(html, f"results/{TINY['run']}/{rel}") == (results / rel).read_bytes(), rel
    for rel in expected:
        if rel.endswith(".png"):
            assert (results / rel).read_bytes()[:8] == PNG, rel
    # the demo knows its true network: the summary scores the learned one against it
    assert "Recovery of the true network" in (results / "report" / "summary.md").read_text()
    # captions are rendered into the report
    assert "Predicted against observed change from the control mean" in html
    assert "The headline metrics of every model" in html
    summary = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert summary["config"]["run"] == TINY["run"]
    assert summary["config"]["train"]["epochs"] == TINY["train"]["epochs"]
    assert set(summary["models"]) >= {"grape", "grape_no_gsl", "no_change", "mean", "additive", "linear"}
    # the summary is logged by the report job
    assert "# GRAPE run summary" in (tiny_run / "logs" / TINY["run"] / "report.log").read_text()


def test_an_ensemble_history_lists_each_member(tmp_path):
    """history.tsv of train.ensemble 2 (a member column): one training row per member, one curve set each."""
    paths = evaluation_outputs(tmp_path)
    metrics = pd.read_csv(paths["metrics"], sep="\t")
    one = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "val_mse": [0.9, 0.5, 0.6]})
    other = one.assign(val_mse=[0.9, 0.8, 0.4])
    history = pd.concat([one.assign(member=0), other.assign(member=1)], ignore_index=True)
    text = report.summarize(metrics, {"full": history})
    assert "| full (member 0) | 3 | 2 | 0.5000 |" in text and "| full (member 1) | 3 | 3 | 0.4000 |" in text
    fig = plots.training_curves({"full": history})
    lines = fig.axes[0].get_lines()
    assert sum(1 for line in lines if line.get_label() in ("train_loss", "val_mse")) == 2  # the first member labelled
    assert sum(1 for line in lines if len(line.get_xdata()) == 3) == 4  # two curves per member, never joined
