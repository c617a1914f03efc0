from __future__ import annotations

import pytest

from grape.split import simulation_split


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
