"""Make tests/data/gears_reference.json: GEARS' (and cell-eval's) own metric values on a small case.

Not run by the test suite. It needs ``cell-gears`` (and optionally ``cell-eval``),
which pull scanpy, torch-geometric and more, so they are not project dependencies.
It was run in a separate virtualenv:

    python3 -m venv /tmp/gears-venv
    /tmp/gears-venv/bin/pip install torch==2.13.0
    /tmp/gears-venv/bin/pip install cell-gears==0.1.2 torch-geometric==2.8.1 cell-eval==0.8.2
    /tmp/gears-venv/bin/python tests/data/make_gears_reference.py tests/data/gears_reference.json

The case (written into the JSON, so the test rebuilds nothing with a random
generator): 210 genes, control cells and four perturbations with a few cells each;
expression values on a 0.25 grid with many zeros (drop-outs, and DE genes that are
zero in every cell of a condition); per-cell predictions, one of which equals the
control mean exactly (undefined correlations, zero signs). The DE entries of ``uns``
are written the way GEARS reads them. GEARS' functions are then called on it exactly
as ``GEARS.train`` calls them: ``compute_metrics(test_res)``,
``deeper_analysis(adata, test_res)`` and ``non_dropout_analysis(adata, test_res)``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

N_GENES = 210
CELLS = {"ctrl": 8, "A+ctrl": 5, "B+ctrl": 5, "A+B": 6, "C+ctrl": 4}
CELL_TYPE = "K562"


def make_case(seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    genes = [f"G{i:03d}" for i in range(N_GENES)]
    base = rng.uniform(0.0, 3.0, size=N_GENES)
    base[rng.choice(N_GENES, 15, replace=False)] = 0.0  # genes never expressed
    rows, labels = [], []
    shift = {c: rng.normal(scale=0.8, size=N_GENES) * (rng.uniform(size=N_GENES) < 0.4) for c in CELLS}
    shift["ctrl"][:] = 0.0
    for cond, n in CELLS.items():
        mean = np.clip(base + shift[cond], 0, None)
        cells = np.clip(mean + rng.normal(scale=0.5, size=(n, N_GENES)), 0, None)
        cells[rng.uniform(size=cells.shape) < 0.25] = 0.0  # drop-outs
        rows.append(np.round(cells * 4) / 4)
        labels += [cond] * n
    x = np.vstack(rows)
    # a DE-ranked gene that is zero in every cell of A+ctrl but not in control
    x[np.array(labels) == "A+ctrl", 5] = 0.0
    x[np.array(labels) == "ctrl", 5] = 2.0
    preds = {}
    ctrl_mean = x[np.array(labels) == "ctrl"].mean(axis=0)
    delta = {c: x[np.array(labels) == c].mean(axis=0) - ctrl_mean for c in CELLS}
    flip = np.where(rng.uniform(size=N_GENES) < 0.4, -1.0, 1.0)
    effect = {
        "A+ctrl": 0.6 * delta["A+ctrl"],  # right direction, too small
        "B+ctrl": flip * delta["B+ctrl"],  # 40% of genes in the wrong direction
        "A+B": 0.8 * delta["A+ctrl"],  # predicts A's effect for the double: poor discrimination
    }
    for cond, n in CELLS.items():
        if cond == "ctrl":
            continue
        if cond == "C+ctrl":
            preds[cond] = np.tile(ctrl_mean, (n, 1)).tolist()  # the no-change prediction
            continue
        p = ctrl_mean + effect[cond] + rng.normal(scale=0.4, size=(n, N_GENES))
        preds[cond] = (np.round(p * 8) / 8).tolist()
    return {"genes": genes, "labels": labels, "x": x.tolist(), "pred": preds}


def gears_uns(x: np.ndarray, labels: list[str], genes: list[str]) -> dict:
    """DE entries in GEARS' form: genes ranked by |mean difference| (any fixed ranking serves the test)."""
    labels_a = np.array(labels)
    ctrl = x[labels_a == "ctrl"].mean(axis=0)
    uns: dict = {k: {} for k in ("rank_genes_groups_cov_all", "top_non_dropout_de_20", "top_non_zero_de_20",
                                 "non_dropout_gene_idx", "non_zeros_gene_idx")}
    for cond in CELLS:
        if cond == "ctrl":
            continue
        mean = x[labels_a == cond].mean(axis=0)
        ranked = np.argsort(-np.abs(mean - ctrl), kind="stable")
        non_zero = np.flatnonzero(mean != 0)
        non_dropout = np.sort(np.concatenate([non_zero, np.flatnonzero((mean == 0) & (ctrl == 0))]))
        key = f"{CELL_TYPE}_{cond}_1+1"
        uns["rank_genes_groups_cov_all"][key] = np.array(genes)[ranked]
        uns["top_non_dropout_de_20"][key] = np.array(genes)[ranked[np.isin(ranked, non_dropout)][:20]]
        uns["top_non_zero_de_20"][key] = np.array(genes)[ranked[np.isin(ranked, non_zero)][:20]]
        uns["non_dropout_gene_idx"][key] = non_dropout
        uns["non_zeros_gene_idx"][key] = non_zero
    return uns


def gears_values(case: dict, uns: dict) -> dict:
    """GEARS' per-perturbation values of the metrics grape reimplements, from GEARS' own functions."""
    from gears.inference import compute_metrics, deeper_analysis, non_dropout_analysis

    genes, labels = case["genes"], case["labels"]
    x = np.asarray(case["x"])
    obs = pd.DataFrame({
        "condition": labels,
        "cell_type": CELL_TYPE,
        "condition_name": [f"{CELL_TYPE}_{c}_1" if c == "ctrl" else f"{CELL_TYPE}_{c}_1+1" for c in labels],
    }, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes))
    adata.uns.update(uns)

    pert_cat, pred, truth, pred_de, truth_de = [], [], [], [], []
    for cond, cells in case["pred"].items():
        key = f"{CELL_TYPE}_{cond}_1+1"
        de_idx = np.where(adata.var_names.isin(np.array(uns["rank_genes_groups_cov_all"][key][:20])))[0]
        t = x[np.array(labels) == cond]
        p = np.asarray(cells)
        for pc, tc in zip(p, t):
            pert_cat.append(cond)
            pred.append(pc)
            truth.append(tc)
            pred_de.append(pc[de_idx])
            truth_de.append(tc[de_idx])
    test_res = {"pert_cat": np.array(pert_cat), "pred": np.array(pred), "truth": np.array(truth),
                "pred_de": np.array(pred_de), "truth_de": np.array(truth_de)}

    _, per_pert = compute_metrics(test_res)
    deeper = deeper_analysis(adata, test_res)
    non_dropout = non_dropout_analysis(adata, test_res)
    keep_c = ["mse", "pearson", "mse_de", "pearson_de"]
    keep_d = ["pearson_delta", "pearson_delta_de", "frac_correct_direction_all", "frac_correct_direction_20",
              "frac_correct_direction_50", "frac_correct_direction_100", "frac_correct_direction_200"]
    keep_n = ["frac_opposite_direction_top20_non_dropout", "frac_sigma_below_1_non_dropout",
              "mse_top20_de_non_dropout"]
    reference: dict = {}
    for cond in case["pred"]:
        values = {k: per_pert[cond][k] for k in keep_c}
        values.update({k: deeper[cond][k] for k in keep_d})
        values.update({k: non_dropout[cond].get(k) for k in keep_n})
        reference[cond] = {k: (None if v is None else float(v)) for k, v in values.items()}
    return reference


def cell_eval_values(case: dict) -> dict | None:
    """cell-eval's discrimination score (L1) of each perturbation, or None without cell-eval."""
    genes, labels = case["genes"], case["labels"]
    x = np.asarray(case["x"])
    try:
        from cell_eval._types import PerturbationAnndataPair
        from cell_eval.metrics import discrimination_score
    except ImportError as err:  # optional
        print(f"cell-eval not importable ({err}); no discrimination reference", file=sys.stderr)
        return None
    # cell-eval labels perturbations by gene; it drops the feature named like the label
    ce_label = {"ctrl": "non-targeting", "A+ctrl": "G010", "B+ctrl": "G020", "A+B": "A+B", "C+ctrl": "G030"}
    real = ad.AnnData(X=x, obs=pd.DataFrame({"target": [ce_label[c] for c in labels]},
                                            index=[f"r{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=genes))
    ctrl_rows = x[np.array(labels) == "ctrl"]
    pred_rows = [ctrl_rows] + [np.asarray(v) for v in case["pred"].values()]
    pred_labels = ["non-targeting"] * len(ctrl_rows) + [ce_label[c] for c, v in case["pred"].items() for _ in v]
    predicted = ad.AnnData(X=np.vstack(pred_rows), obs=pd.DataFrame({"target": pred_labels},
                                                                     index=[f"p{i}" for i in range(len(pred_labels))]),
                           var=pd.DataFrame(index=genes))
    pair = PerturbationAnndataPair(real=real, pred=predicted, pert_col="target", control_pert="non-targeting")
    scores = discrimination_score(pair, metric="l1")
    return {"labels": ce_label, "discrimination_score_l1": {k: float(v) for k, v in scores.items()}}


def main(out: str) -> None:
    case = make_case()
    uns = gears_uns(np.asarray(case["x"]), case["labels"], case["genes"])
    reference = gears_values(case, uns)
    versions = {"cell-gears": version("cell-gears")}
    cell_eval_ref = cell_eval_values(case)
    if cell_eval_ref is not None:
        versions["cell-eval"] = version("cell-eval")

    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"versions": versions, "cell_type": CELL_TYPE, "case": case,
                   "uns": {k: {kk: np.asarray(vv).tolist() for kk, vv in v.items()} for k, v in uns.items()},
                   "gears": reference, "cell_eval": cell_eval_ref}, handle, separators=(",", ":"))
        handle.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gears_reference.json")
