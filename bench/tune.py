"""Hyperparameter search on validation conditions only (Optuna), over several real screens and splits.

Each trial trains the model with one set of values on every split of every screen given and
scores it by the validation pearson_delta of the epoch the training selects (``model.yaml``'s
``best_val_pearson_delta``: the model selection metric, ``train.select_metric``), averaged over the
splits of a screen, then over the screens (each screen weighs the same). Test conditions are
never read: the trainings' predictions of them are dropped. The chosen values are then scored on
the test conditions by the workflow (``split.seeds``, ``grape aggregate``), a run of its own.

Inputs come from finished workflow runs with ``split.seeds``: ``results/<run>/graph/full/graph.safetensors``,
``results/<run>/annotate/mapping.tsv`` and ``results/<run>/splits/seed<k>/split/split.tsv``; the
dataset and train options from the run's config files (``config.yaml`` first, then the screen's).

    .venv/bin/pip install -e '.[bench]'     # optuna
    .venv/bin/python bench/tune.py --screen workflow/configs/papalexi2021.yaml \\
        --screen workflow/configs/norman_devel.yaml --seeds 1 2 3 4 5 --trials 24 \\
        --storage sqlite:///bench/tune.db --study singles --out bench/tune.tsv

Several processes with the same ``--storage`` and ``--study`` share one search (give each
``OMP_NUM_THREADS=1``). ``--out`` lists every finished trial: values and the score per screen.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from grape.annotation.identity import GeneIdentity
from grape.config import validate_config
from grape.data.dataset import read_dataset
from grape.data.split import read_split
from grape.graph.build import load_graph
from grape.model import train

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
log = logging.getLogger("tune")


def space(trial) -> dict:
    """The search space: the optimiser's and the network's main knobs (defaults in config.yaml)."""
    return {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.4),
        "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
        "layers": trial.suggest_int("layers", 1, 3),
        "gsl_k": trial.suggest_categorical("gsl_k", [5, 10, 20]),
        "loss_graph": trial.suggest_float("loss_graph", 0.01, 1.0, log=True),
        "loss_huber": trial.suggest_float("loss_huber", 0.0, 2.0),
        "batch_size": trial.suggest_categorical("batch_size", [8, 16, 32]),
    }


def merged_config(path: Path) -> dict:
    """config.yaml overlaid by the screen's config (one level deep, as Snakemake's --configfile), validated."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, values in (yaml.safe_load(path.read_text()) or {}).items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return dict(validate_config(config, SCHEMA, base_dir=REPO))


@dataclasses.dataclass
class Screen:
    name: str
    options: train.Options
    problem: train.Problem
    graph: object
    splits: dict[int, pd.DataFrame]


def load_screen(config_path: Path, seeds: list[int]) -> Screen:
    config = merged_config(config_path)
    run = REPO / "results" / config["run"]
    fields = {f.name for f in dataclasses.fields(train.Options)}
    values = {k: v for section in ("dataset", "train") for k, v in config[section].items() if k in fields}
    options = train.Options(**values).resolved()
    graph = load_graph(run / "graph" / "full" / "graph.safetensors")
    identity = GeneIdentity.read(run / "annotate" / "mapping.tsv")
    # the h5ad the workflow's train rule reads: the run's subset (dataset.subset) or the source file
    source = run / "dataset" / "dataset.h5ad" if config["dataset"].get("subset") else REPO / config["dataset"]["path"]
    adata = read_dataset(source, options=options)
    problem = train.build_problem(adata, graph, options=options, identity=identity)
    conditions = list(dict.fromkeys(problem.conditions))
    splits = {k: read_split(run / "splits" / f"seed{k}" / "split" / "split.tsv", conditions) for k in seeds}
    return Screen(config["run"], options, problem, graph, splits)


def score(screen: Screen, values: dict) -> dict[str, float]:
    """Means over the screen's splits of the selected epoch's validation pearson_delta and MSE, and the seconds."""
    options = dataclasses.replace(screen.options, **values)
    start, rows = time.perf_counter(), []
    for split in screen.splits.values():
        trained = train.train_model(screen.problem, screen.graph, split, options=options, device="cpu")
        history = trained.history
        rows.append(history.loc[history["epoch"] == trained.facts["best_epoch"], ["val_pearson_delta", "val_mse"]].iloc[0])
    table = pd.DataFrame(rows)
    return {"val_pd": float(table["val_pearson_delta"].mean()), "val_mse": float(table["val_mse"].mean()),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    import optuna

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screen", type=Path, action="append", required=True, help="a screen's config (repeat)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="split.seeds of the runs")
    parser.add_argument("--trials", type=int, default=24, help="trials this process runs (0: write --out of the stored study)")
    parser.add_argument("--storage", default=None, help="Optuna storage shared by processes (sqlite:///...)")
    parser.add_argument("--study", default="grape", help="study name in the storage")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--defaults-first", action="store_true", help="enqueue config.yaml's values as a trial")
    parser.add_argument("--out", type=Path, default=None, help="TSV of every finished trial")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("grape", "grape.model.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)

    screens = [load_screen(p, args.seeds) for p in args.screen] if args.trials > 0 else []  # 0: only --out
    study = optuna.create_study(study_name=args.study, storage=args.storage, direction="maximize",
                                load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=args.sampler_seed))
    if args.defaults_first and screens:
        defaults = {k: getattr(screens[0].options, k) for k in space(_Keys())}
        study.enqueue_trial(defaults, skip_if_exists=True)

    def objective(trial) -> float:
        values = space(trial)
        per_screen = {}
        for screen in screens:
            scores = score(screen, values)
            per_screen[screen.name] = scores["val_pd"]
            for key, value in scores.items():
                trial.set_user_attr(f"{key}_{screen.name}", value)
        total = sum(per_screen.values()) / len(per_screen)
        log.info("trial %d: %.4f %s %s", trial.number, total, per_screen, values)
        return total

    study.optimize(objective, n_trials=args.trials)
    if args.out is not None:
        table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
        table.sort_values("value", ascending=False).to_csv(args.out, sep="\t", index=False, float_format="%.6g")
    log.info("best trial %d: %.4f %s", study.best_trial.number, study.best_value, study.best_params)


class _Keys:
    """A stand-in trial that answers every suggestion with a placeholder, to read the space's keys."""

    def suggest_float(self, name, low, high, log=False):
        return low

    def suggest_int(self, name, low, high):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]


if __name__ == "__main__":
    main()
