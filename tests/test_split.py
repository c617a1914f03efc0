from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grape.data import split
from grape.stages import split as split_stage
from grape.data.split import SplitError, logo_split, perturbed_gene_list, read_split, simulation_split, table_split


def genes_of(cond: str) -> tuple[str, ...]:
    return () if cond == "ctrl" else tuple(sorted(g for g in cond.split("+") if g != "ctrl"))


def conditions(n_singles: int = 40, n_doubles: int = 30) -> list[str]:
    genes = [f"G{i:02d}" for i in range(n_singles)]
    singles = [f"{g}+ctrl" for g in genes]
    doubles = [f"{genes[i]}+{genes[(3 * i + 1) % n_singles]}" for i in range(n_doubles)]
    return ["ctrl", *singles, *doubles]


def test_split_is_seeded_and_complete():
    conds = conditions()
    a = simulation_split(conds, genes_of=genes_of, seed=3)
    b = simulation_split(conds, genes_of=genes_of, seed=3)
    c = simulation_split(conds, genes_of=genes_of, seed=4)
    assert a.equals(b)
    assert not a.equals(c)
    assert set(a["condition"]) == set(conds) - {"ctrl"}
    assert set(a["split"]) == {"train", "val", "test"}


def test_gears_subgroups_are_consistent():
    table = simulation_split(conditions(), genes_of=genes_of, seed=0)
    rows = list(table.itertuples(index=False))
    seen_outer = {genes_of(c)[0] for c, s, g in rows if s in ("train", "val") and len(genes_of(c)) == 1}
    seen_train = {genes_of(c)[0] for c, s, g in rows if s == "train" and len(genes_of(c)) == 1}
    for cond, split, group in rows:
        genes = genes_of(cond)
        if split == "test" and len(genes) == 1:
            assert group == "unseen_single" and genes[0] not in seen_outer
        elif split == "test":
            assert group == f"combo_seen{sum(g in seen_outer for g in genes)}"
        elif split == "val" and len(genes) == 1:
            assert group == "unseen_single" and genes[0] not in seen_train
        elif split == "val":
            assert group == f"combo_seen{sum(g in seen_train for g in genes)}"
        elif len(genes) == 1:
            assert group == "seen_single"
        else:
            assert group == "combo_seen2" and all(g in seen_train for g in genes)
    groups = set(table.loc[table["split"] == "test", "subgroup"])
    assert {"unseen_single", "combo_seen1", "combo_seen2"} <= groups


def test_too_few_conditions_is_a_clear_error():
    with pytest.raises(ValueError, match="too few conditions"):
        simulation_split(["ctrl", "A+ctrl", "B+ctrl"], genes_of=genes_of, seed=0)


def test_triples_are_refused():
    with pytest.raises(ValueError, match="more than two genes"):
        simulation_split(["ctrl", "A+B+C", *conditions()[1:]], genes_of=genes_of, seed=0)


# --------------------------------------------------------------------------- leave one gene out


def test_logo_fold_holds_out_every_condition_of_one_gene():
    conds = conditions(n_singles=10, n_doubles=8)
    genes = perturbed_gene_list(conds, genes_of=genes_of)
    for fold in (0, 3, 9):
        table = logo_split(conds, genes_of=genes_of, fold=fold, seed=2)
        held = genes[fold]
        test = table.loc[table["split"] == "test", "condition"]
        assert set(test) == {c for c in conds if held in genes_of(c)}
        assert not any(held in genes_of(c) for c in table.loc[table["split"] != "test", "condition"])
        assert table.loc[(table["condition"] == f"{held}+ctrl"), "subgroup"].item() == "unseen_single"
        val_genes = {g for c in table.loc[table["split"] == "val", "condition"] for g in genes_of(c)}
        train_genes = {g for c in table.loc[table["split"] == "train", "condition"] for g in genes_of(c)}
        # validation genes never appear alone in training singles
        assert not any(len(genes_of(c)) == 1 and genes_of(c)[0] in val_genes - train_genes
                       for c in table.loc[table["split"] == "train", "condition"])
    assert logo_split(conds, genes_of=genes_of, fold=4, seed=2).equals(logo_split(conds, genes_of=genes_of, fold=4, seed=2))


def test_logo_subgroups_of_doubles_count_seen_genes():
    conds = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "E+ctrl", "A+B", "A+F", "C+D"]
    table = logo_split(conds, genes_of=genes_of, fold=0, seed=0, val_gene_fraction=0.2).set_index("condition")
    assert table.loc["A+B", "split"] == "test" and table.loc["A+F", "split"] == "test"
    # A has no training single (held out); F has none at all
    assert table.loc["A+F", "subgroup"] == "combo_seen0"
    assert table.loc["A+B", "subgroup"] in {"combo_seen0", "combo_seen1"}  # B may validate


def test_logo_fold_out_of_range():
    with pytest.raises(SplitError, match=r"split.fold 7 out of range: .* 3 perturbed genes"):
        logo_split(["ctrl", "A+ctrl", "B+ctrl", "C+ctrl"], genes_of=genes_of, fold=7)


def test_logo_too_few_conditions():
    with pytest.raises(SplitError, match="too few conditions for the split: no train"):
        logo_split(["ctrl", "A+ctrl", "B+ctrl"], genes_of=genes_of, fold=0, val_gene_fraction=0.9)


# --------------------------------------------------------------------------- user table


def write_table(path, rows, columns=("condition", "split")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, sep="\t", index=False)
    return path


def test_table_split_fills_subgroups(tmp_path):
    conds = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "A+B", "A+C", "B+C"]
    path = write_table(tmp_path / "s.tsv", [("A+ctrl", "train"), ("B+ctrl", "train"), ("C+ctrl", "test"),
                                            ("A+B", "test"), ("A+C", "val"), ("B+C", "train")])
    table = table_split(path, conds, genes_of=genes_of).set_index("condition")
    assert table.loc["C+ctrl", "subgroup"] == "unseen_single"
    assert table.loc["A+B", "subgroup"] == "combo_seen2"
    assert table.loc["A+C", "subgroup"] == "combo_seen1"
    assert table.loc["A+ctrl", "subgroup"] == "seen_single"


def test_table_split_keeps_given_subgroups(tmp_path):
    conds = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl"]
    path = write_table(tmp_path / "s.tsv", [("A+ctrl", "train", "x"), ("B+ctrl", "val", "y"), ("C+ctrl", "test", "z")],
                       columns=("condition", "split", "subgroup"))
    assert table_split(path, conds, genes_of=genes_of)["subgroup"].tolist() == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("A+ctrl", "train"), ("B+ctrl", "val")], r"not in the split: C\+ctrl"),
        ([("A+ctrl", "train"), ("B+ctrl", "val"), ("C+ctrl", "test"), ("Z+ctrl", "test")], r"not in the dataset: Z\+ctrl"),
        ([("A+ctrl", "train"), ("B+ctrl", "validation"), ("C+ctrl", "test")], "unknown split values validation"),
        ([("A+ctrl", "train"), ("B+ctrl", "train"), ("C+ctrl", "test")], "too few conditions for the split: no val"),
        ([("A+ctrl", "train"), ("A+ctrl", "val"), ("C+ctrl", "test")], r"listed twice: A\+ctrl"),
    ],
)
def test_table_split_errors(tmp_path, rows, message):
    path = write_table(tmp_path / "bad.tsv", rows)
    with pytest.raises(SplitError, match=message):
        table_split(path, ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl"], genes_of=genes_of)


def test_table_split_accepts_and_ignores_the_control_row(tmp_path):
    path = write_table(tmp_path / "s.tsv", [("ctrl", "train"), ("A+ctrl", "train"), ("B+ctrl", "val"),
                                            ("C+ctrl", "test")])
    table = table_split(path, ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl"], genes_of=genes_of)
    assert table["condition"].tolist() == ["A+ctrl", "B+ctrl", "C+ctrl"]
    assert table["split"].tolist() == ["train", "val", "test"]


def test_run_with_a_custom_control_row_in_the_table(tmp_path):
    conds = ["A+ctrl", "B+ctrl", "C+ctrl"]
    data = write_dataset(tmp_path / "d.h5ad", conds, control="non-targeting")
    table = write_table(tmp_path / "user.tsv", [("non-targeting", "train"), ("A+ctrl", "train"), ("B+ctrl", "val"),
                                                ("C+ctrl", "test")])
    out = tmp_path / "split.tsv"
    split_stage.run(options=split.Options(kind="table", control="non-targeting"), dataset=data, out=out, table=table)
    assert pd.read_csv(out, sep="\t")["condition"].tolist() == conds


def test_table_split_needs_columns(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("perturbation\tset\nA+ctrl\ttrain\n")
    with pytest.raises(SplitError, match="missing columns condition, split"):
        table_split(path, ["ctrl", "A+ctrl"], genes_of=genes_of)


# --------------------------------------------------------------------------- stage


def write_dataset(path, conds, control="ctrl"):
    labels = [control, control, *[c for c in conds for _ in range(2)]]
    ad.AnnData(X=np.ones((len(labels), 3), dtype=np.float32),
               obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
               var=pd.DataFrame({"gene_name": ["A", "B", "C"]}, index=["e1", "e2", "e3"])).write_h5ad(path)
    return path


@pytest.mark.parametrize("kind", ["simulation", "logo", "table"])
def test_run_writes_each_kind(tmp_path, kind):
    conds = [c for c in conditions(n_singles=12, n_doubles=6) if c != "ctrl"]
    data = write_dataset(tmp_path / "d.h5ad", conds)
    table = None
    if kind == "table":
        table = write_table(tmp_path / "user.tsv", [(c, ("train", "val", "test")[i % 3]) for i, c in enumerate(conds)])
    out = tmp_path / "split.tsv"
    split_stage.run(options=split.Options(kind=kind, fold=2), dataset=data, out=out, table=table)
    written = pd.read_csv(out, sep="\t")
    assert list(written.columns) == ["condition", "split", "subgroup"]
    assert sorted(written["condition"]) == sorted(conds)
    assert read_split(out, conds).shape[0] == len(conds)


def test_run_table_kind_without_table(tmp_path):
    data = write_dataset(tmp_path / "d.h5ad", ["A+ctrl"])
    with pytest.raises(SplitError, match="no split.table was given"):
        split_stage.run(options=split.Options(kind="table"), dataset=data, out=tmp_path / "s.tsv")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="split.kind"):
        split.Options(kind="random")
