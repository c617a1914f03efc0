"""GRAPE against the additive baseline on held-out doubles of the real Norman 2019 subset.

Data: ``../shared/data/perturbench_devel.h5ad`` (skipped when absent), cells with
``obs['dataset'] == 'norman19'`` (K562 CRISPRa, 500 genes, control label ``control``).
Nodes are the 500 measured genes plus the perturbed genes that are not measured.

Split, per repeat (seed): the doubles whose two singles are both in the data are the
candidates; a seeded half of them (rounded up) is the test set. Every other condition
trains, except a seeded quarter of the remaining doubles (at least one), which validate
(early stopping). So each test double's singles are seen in training, as the additive
baseline needs.

Features: text only. The gene descriptions are the RefSeq summaries in
``../shared/data/refseq_summaries_human.tsv.gz`` embedded with the packaged MiniLM (as
``grape embed`` does; a gene without a summary gets the fallback text ``"<name> is a
<biotype> gene."``); no genome is available offline here, so there are no DNA features and
the prior graph is built from text similarity alone. Biotypes: RefSeq's ``type_of_gene``
(protein-coding -> coding); genes without a RefSeq entry are non-coding when their name
looks like a lncRNA / antisense / pseudogene locus (``RP11-``, ``-AS1``, ``LINC``, ...),
else coding.

Metrics on the test doubles (per condition, then averaged, as GEARS): pearson_delta (all
500 genes) and the MSE on the condition's top-20 non-dropout DE genes (GEARS' Welch t-test
ranking, ``grape.evaluation.de``). Models: GRAPE (doubles additive: singles' sum + learned
interaction), GRAPE with both genes injected at once (joint), the additive baseline
(control + observed single A change + observed single B change) and the mean baseline
(mean of training conditions).

    .venv/bin/python bench/model_norman.py --repeats 5 --out bench/model_norman.tsv
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from grape.data.dataset import DatasetOptions, condition_genes, pseudobulk
from grape.evaluation.de import TOP_NON_DROPOUT_KEY, add_de_rankings, de_key
from grape.features.models import embed_texts
from grape.graph.build import Options as GraphOptions
from grape.graph.build import build_graph
from grape.model.train import Options, build_problem, fit, graph_tensors, predict

log = logging.getLogger("bench.model_norman")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NONCODING = re.compile(r"^(RP\d+-|CT[ABCD]-|AC\d{6}|AL\d{6}|AP\d{6}|LINC\d|MIR\d+HG|SNHG\d)|(-AS\d|-IT\d|-OT\d|P\d+)$")


def gene_table(genes: list[str], refseq: pd.DataFrame) -> pd.DataFrame:
    """Biotype and description of each gene (RefSeq summary, else the fallback text)."""
    by_symbol = refseq.drop_duplicates("Symbol").set_index("Symbol")
    rows = []
    for gene in genes:
        if gene in by_symbol.index:
            entry = by_symbol.loc[gene]
            biotype = "protein_coding" if entry["type_of_gene"] == "protein-coding" else "lncRNA"
            text = str(entry["Gene_summary"])
        else:
            biotype = "lncRNA" if NONCODING.search(gene) else "protein_coding"
            text = f"{gene} is a {biotype.replace('_', ' ')} gene."
        rows.append({"gene": gene, "biotype": biotype, "description": text, "refseq": gene in by_symbol.index})
    return pd.DataFrame(rows)


def make_split(conditions: list[str], *, options: DatasetOptions, seed: int) -> pd.DataFrame:
    genes_of = {c: condition_genes(c, options=options) for c in conditions}
    singles = {g[0] for g in genes_of.values() if len(g) == 1}
    eligible = sorted(c for c, g in genes_of.items() if len(g) == 2 and all(x in singles for x in g))
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(eligible)[: (len(eligible) + 1) // 2].tolist())
    other_doubles = sorted(c for c, g in genes_of.items() if len(g) == 2 and c not in test)
    val = set(rng.permutation(other_doubles)[: max(1, len(other_doubles) // 4)].tolist())
    split = ["test" if c in test else "val" if c in val else "train" for c in conditions]
    subgroup = ["combo_seen2" if len(genes_of[c]) == 2 else "seen_single" for c in conditions]
    return pd.DataFrame({"condition": conditions, "split": split, "subgroup": subgroup})


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="random halves of the eligible doubles")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("grape").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    path = DATA / "perturbench_devel.h5ad"
    if not path.exists():
        log.warning("skipped: %s is absent", path)
        return

    adata = ad.read_h5ad(path)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    dopts = DatasetOptions(control="control", gene_name_key="gene_name")
    means = pseudobulk(adata, options=dopts)
    conditions = [c for c in means.index if c != "control"]
    measured = adata.var_names.astype(str).tolist()
    perturbed = sorted({g for c in conditions for g in condition_genes(c, options=dopts)})
    nodes = measured + [g for g in perturbed if g not in set(measured)]
    refseq = pd.read_csv(DATA / "refseq_summaries_human.tsv.gz", sep="\t", dtype=str)
    table = gene_table(nodes, refseq)
    log.info("nodes: %d (%d measured, %d perturbed only); RefSeq summaries for %d; non-coding %d",
             len(nodes), len(measured), len(nodes) - len(measured), int(table["refseq"].sum()),
             int((table["biotype"] != "protein_coding").sum()))
    start = time.perf_counter()
    text = embed_texts(table["description"].tolist())  # the packaged MiniLM, as `grape embed` by default
    log.info("text embeddings: %.1f s", time.perf_counter() - start)
    gopts = GraphOptions(top_k=10, min_similarity=0.2)
    # the text-only graph variant: its prior from the text alone (the DNA column is a placeholder)
    graph = build_graph(table[["gene", "biotype"]], text, np.zeros((len(nodes), 1), np.float32), options=gopts,
                        variant="text_only")
    problem = build_problem(adata, graph, options=dopts)
    control = np.zeros(len(nodes), np.float32)
    flag = np.zeros(len(nodes), np.float32)
    control[problem.measured_nodes.numpy()] = problem.control
    flag[problem.measured_nodes.numpy()] = 1.0
    tensors = graph_tensors(graph, control, flag)

    add_de_rankings(adata, options=dopts, n_top=20)
    cell_type = str(adata.obs["cell_type"].iloc[0])
    position = {g: i for i, g in enumerate(measured)}
    de = {c: np.array([position[g] for g in np.asarray(adata.uns[TOP_NON_DROPOUT_KEY][de_key(cell_type, c)]).astype(str)])
          for c in conditions}
    ctrl = means.loc["control"].to_numpy()
    rows = []
    for repeat in range(args.repeats):
        split = make_split(conditions, options=dopts, seed=repeat)
        test = split.loc[split["split"] == "test", "condition"].tolist()
        train_conds = split.loc[split["split"] == "train", "condition"].tolist()
        preds: dict[str, pd.DataFrame] = {}
        for name, doubles in (("grape", "additive"), ("grape_joint", "joint")):
            opts = Options(control="control", epochs=args.epochs, patience=60, seed=repeat, device="cpu",
                           modalities=["text"], doubles=doubles, pretrain_epochs=0)
            start = time.perf_counter()
            model, history, facts = fit(problem, tensors, split, options=opts)
            log.info("repeat %d %s: %d epochs in %.1f s (best %d)", repeat, name, len(history),
                     time.perf_counter() - start, facts["best_epoch"])
            preds[name] = pd.DataFrame(predict(model, problem, tensors, device="cpu"), index=problem.conditions,
                                       columns=means.columns)
        additive = {}
        for c in test:
            a, b = condition_genes(c, options=dopts)
            additive[c] = means.loc[a].to_numpy() + means.loc[b].to_numpy() - ctrl
        preds["additive"] = pd.DataFrame.from_dict(additive, orient="index", columns=means.columns)
        preds["mean"] = pd.DataFrame(np.tile(means.loc[train_conds].to_numpy().mean(0), (len(test), 1)),
                                     index=test, columns=means.columns)
        for model_name, pred in preds.items():
            for c in test:
                p, t = pred.loc[c].to_numpy(), means.loc[c].to_numpy()
                rows.append({"repeat": repeat, "model": model_name, "condition": c,
                             "pearson_delta": pearson(p - ctrl, t - ctrl),
                             "mse_de": float(np.mean((p[de[c]] - t[de[c]]) ** 2)),
                             "mse": float(np.mean((p - t) ** 2))})
        log.info("repeat %d test doubles: %s", repeat, ", ".join(test))
    per_condition = pd.DataFrame(rows)
    summary = per_condition.groupby(["model"])[["pearson_delta", "mse_de", "mse"]].mean()
    by_repeat = per_condition.groupby(["repeat", "model"])[["pearson_delta", "mse_de"]].mean().unstack("model")
    log.info("per repeat:\n%s", by_repeat.round(4).to_string())
    log.info("mean over repeats and test doubles (%d condition-repeats per model):\n%s",
             len(per_condition) // per_condition["model"].nunique(), summary.round(4).to_string())
    if args.out:
        per_condition.to_csv(args.out, sep="\t", index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
