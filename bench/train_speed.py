"""Seconds per training epoch of the old training code (a checkout of an older commit) and the new, side by side.

Inputs come from ``bench/train_inputs.py`` (CaRPool's 2,000 features, random graphs of any
size with CaRPool's 186 conditions, the demo's size), built once and saved, so both codes train
on identical tensors. Each (code, problem) runs in its own process with one torch thread; the
old and the new process of a problem run at the same time (two cores), so both see the same
load. ``train.fit`` with the default options except ``pretrain_epochs 0`` (pretraining is no part
of an epoch) and no early stop; the figure is the median of ``history.tsv``'s ``seconds``
(the whole epoch, validation included) over the epochs after the first.

    git worktree add /tmp/grape-da19230 da19230     # or: git archive da19230 | tar -x -C /tmp/grape-da19230
    .venv/bin/python bench/train_speed.py speed --old /tmp/grape-da19230 --out bench/train_speed.tsv
    .venv/bin/python bench/train_speed.py speed --old <checkout> --kinds carpool random --old-epochs 3 --new-epochs 3
    .venv/bin/python bench/train_speed.py speed --old "$PWD" --kinds carpool random --new-set dropout_shared=1
    .venv/bin/python bench/train_speed.py scaling --out bench/train_scaling.tsv
    .venv/bin/python bench/train_speed.py metrics --old /tmp/grape-da19230 --seeds 0 1 2 --out bench/train_metrics.tsv
    .venv/bin/python bench/train_speed.py metrics --seeds 0 1 2 --out bench/train_refresh_metrics.tsv
    .venv/bin/python bench/train_speed.py profile --code . --kind carpool
    .venv/bin/python bench/train_speed.py flops --kind carpool --set hidden=64 batch_size=16 --out bench/train_flops_carpool.tsv

``flops`` counts the new code's matrix products of an epoch and sets them against this machine's
measured float32 rate (:func:`flops_cmd`).

``worker`` (internal) trains one code on one saved input and prints one JSON line. The old code may
have either package layout: ``grape.model.train`` / ``grape.model.gnn``, or da19230's flat
``grape.train`` / ``grape.model`` (:func:`_train_module`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train_module():
    """The training module and ``GraphTensors`` of the code on ``sys.path``: ``grape.model.train`` and
    ``grape.model.gnn`` (the package layout since the sub-packages), or ``grape.train`` and
    ``grape.model`` (da19230's flat layout)."""
    try:
        from grape.model import train
        from grape.model.gnn import GraphTensors
    except ImportError:
        from grape import train
        from grape.model import GraphTensors
    return train, GraphTensors


def _problem_and_graph(inputs: dict):
    """The Problem, GraphTensors and split table of the code on ``sys.path`` (old and new field names)."""
    import pandas as pd
    import torch

    train, GraphTensors = _train_module()
    fields = train.Problem.__dataclass_fields__
    common = dict(conditions=inputs["conditions"], perturbed=inputs["perturbed"], delta=inputs["delta"],
                  measured_nodes=inputs["measured_nodes"], var_names=[inputs["nodes"][i] for i in
                                                                      inputs["measured_nodes"].tolist()])
    if "controls" in fields:
        problem = train.Problem(controls=inputs["control"][None], **common)
    else:
        problem = train.Problem(control=inputs["control"], **common)
    graph = GraphTensors({"text": inputs["text"], "dna": inputs["dna"]}, inputs["context"], inputs["node_type"],
                         ("coding", "noncoding"), inputs["edge_index"], inputs["edge_weight"].float())
    split = pd.DataFrame([{"condition": c, "split": s, "subgroup": s} for s, cs in inputs["split"].items()
                          for c in cs])
    torch.manual_seed(0)
    return problem, graph, split


def _overrides(items: list[str]) -> dict[str, int]:
    """Integer option overrides ``key=value`` (``--set``)."""
    return {k: int(v) for k, v in (item.split("=") for item in items)}


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(args.code).resolve()))
    import dataclasses

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    train, _ = _train_module()

    inputs = torch.load(args.inputs, weights_only=False)
    problem, graph, split = _problem_and_graph(inputs)
    options = dataclasses.replace(train.Options(), epochs=args.epochs, patience=args.epochs + 1, device="cpu",
                                  seed=args.seed, pretrain_epochs=args.pretrain_epochs, **_overrides(args.set))
    start = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=False) as prof:
            _, history, _ = train.fit(problem, graph, split, options=options, device="cpu")
        table = prof.key_averages()
        flops = sum(e.flops for e in table if e.flops)
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows), file=sys.stderr)
        total = sum(e.self_cpu_time_total for e in table) / 1e6
        rows = sorted(table, key=lambda e: -e.self_cpu_time_total)[: args.rows]
        top = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / 1e6 / total,
                "calls": e.count} for e in rows]
        out = {"epoch_seconds": history["seconds"].tolist(), "profiled_flops": flops, "top": top,
               "profiled_self_seconds": total}
        print(json.dumps(out))
        return
    model, history, facts = train.fit(problem, graph, split, options=options, device="cpu")
    out = {"epoch_seconds": history["seconds"].tolist(), "fit_seconds": time.perf_counter() - start,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "best_epoch": int(facts["best_epoch"]), "nodes": graph.num_nodes}
    if args.metrics:
        test = problem.rows_of(list(inputs["split"]["test"])) if hasattr(problem, "rows_of") else torch.tensor(
            [problem.conditions.index(c) for c in inputs["split"]["test"]])
        pred = train.predict_delta(model, graph, problem.perturbed[test], device="cpu")[:, problem.measured_nodes]
        target = problem.delta[test]
        r = train.pearson_rows(pred, target)
        out.update(test_pearson_delta=float(r[~r.isnan()].mean()), test_mse=float(((pred - target) ** 2).mean()),
                   best_val_pearson_delta=float(history["val_pearson_delta"].max()), test_conditions=len(test))
    print(json.dumps(out))


def _inputs(kind: str, genes: int, directory: Path, seed: int = 0) -> Path:
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.train_inputs import build

    path = directory / f"{kind}_{genes}_{seed}.pt"
    if not path.exists():
        torch.save(build(kind, genes=genes, seed=seed), path)
    return path


def _launch(code: Path, inputs: Path, *, epochs: int, seed: int = 0, metrics: bool = False,
            pretrain_epochs: int = 0, overrides: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ""}
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--code", str(code), "--inputs", str(inputs),
           "--epochs", str(epochs), "--seed", str(seed), "--pretrain-epochs", str(pretrain_epochs)]
    if metrics:
        cmd.append("--metrics")
    if overrides:
        cmd += ["--set", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/tmp")


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1])


def _median_after_first(seconds: list[float]) -> float:
    import numpy as np

    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def speed(args: argparse.Namespace) -> None:
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, genes, old_epochs, new_epochs in (("demo", 300, 10, 10),
                                                    ("carpool", 2000, args.old_epochs, args.new_epochs),
                                                    ("random", 5000, args.old_epochs, args.new_epochs)):
            if kind not in args.kinds:
                continue
            path = _inputs(kind, genes, Path(tmp))
            load = _load()
            old = _launch(Path(args.old), path, epochs=old_epochs, overrides=tuple(args.old_set))
            new = _launch(ROOT, path, epochs=new_epochs, overrides=tuple(args.new_set))
            r_old, r_new = _result(old), _result(new)
            row = {"problem": kind, "nodes": r_new["nodes"], "old_epoch_s": _median_after_first(r_old["epoch_seconds"]),
                   "new_epoch_s": _median_after_first(r_new["epoch_seconds"]), "old_epochs": old_epochs,
                   "new_epochs": new_epochs, "load_before": load, "load_after": _load(), "threads": 1,
                   "old_set": " ".join(args.old_set), "new_set": " ".join(args.new_set)}
            row["speedup"] = row["old_epoch_s"] / row["new_epoch_s"]
            print(row, flush=True)
            rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")


def scaling(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for genes in args.genes:
            path = _inputs("random", genes, Path(tmp))
            load = _load()
            r = _result(_launch(ROOT, path, epochs=args.epochs))
            rows.append({"genes": genes, "epoch_s": _median_after_first(r["epoch_seconds"]),
                         "first_epoch_s": r["epoch_seconds"][0], "epochs": args.epochs,
                         "peak_rss_gib": r["peak_rss_gib"], "load_before": load, "load_after": _load(), "threads": 1})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    slope = np.polyfit(np.log(table["genes"]), np.log(table["epoch_s"]), 1)[0]
    table["exponent_fit"] = slope
    print(table.to_string(index=False))
    print(f"exponent of epoch seconds in N: {slope:.2f}")
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")


def metrics(args: argparse.Namespace) -> None:
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _inputs("carpool", 2000, Path(tmp))
        for seed in args.seeds:
            load = _load()
            if args.old:  # the old code against the new
                procs = {"old": _launch(Path(args.old), path, epochs=args.epochs, seed=seed, metrics=True,
                                        pretrain_epochs=args.pretrain_epochs),
                         "new": _launch(ROOT, path, epochs=args.epochs, seed=seed, metrics=True,
                                        pretrain_epochs=args.pretrain_epochs)}
            else:  # the new code searching the learned graph every step (the old model) against the default
                procs = {"new, gsl_refresh 1": _launch(ROOT, path, epochs=args.epochs, seed=seed, metrics=True,
                                                       pretrain_epochs=args.pretrain_epochs,
                                                       overrides=("gsl_refresh=1",)),
                         "new, default": _launch(ROOT, path, epochs=args.epochs, seed=seed, metrics=True,
                                                 pretrain_epochs=args.pretrain_epochs)}
            for code, proc in procs.items():
                r = _result(proc)
                rows.append({"code": code, "seed": seed, "test_pearson_delta": r["test_pearson_delta"],
                             "test_mse": r["test_mse"], "best_val_pearson_delta": r["best_val_pearson_delta"],
                             "best_epoch": r["best_epoch"], "epochs": args.epochs,
                             "epoch_s": _median_after_first(r["epoch_seconds"]), "load": load})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(table.groupby("code")[["test_pearson_delta", "test_mse"]].agg(["mean", "std"]).to_string())
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.5g")


def profile_cmd(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _inputs(args.kind, args.genes, Path(tmp))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--code", str(Path(args.code).resolve()),
               "--inputs", str(path), "--epochs", str(args.epochs), "--profile", "--rows", str(args.rows)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp")
        print(proc.stderr[-20000:])
        print(proc.stdout)


def _matmul_flops(func, args) -> tuple[str, float, bool] | None:
    """``(op, flops, sparse)`` of a matrix product ``func(*args)``, or None for any other op: dense
    ``2 m k n`` (batched: times the batch), a product with a sparse operand ``2 nnz n``, a sampled
    product (SDDMM) ``2 nnz k``."""
    import torch

    aten = torch.ops.aten
    name = func.overloadpacket.__name__
    if name in ("mm", "addmm", "bmm", "baddbmm"):
        a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
        if a.layout != torch.strided or b.layout != torch.strided:
            sparse, dense = (a, b) if a.layout != torch.strided else (b, a)
            width = dense.shape[-1] if sparse is a else dense.shape[0]
            return name, 2.0 * sparse._nnz() * width, True
        batch = a.shape[0] if a.dim() == 3 else 1
        return name, 2.0 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1], False
    if func.overloadpacket is aten.sparse_sampled_addmm:
        return name, 2.0 * args[0]._nnz() * args[1].shape[-1], True
    return None


def flops_cmd(args: argparse.Namespace) -> None:
    """FLOPs of the new code's training epochs, set against this machine's measured rate of matrix products.

    A dispatch mode sees every operator of a ``train.fit`` (forward, backward, the learned
    graph's search, validation), counts the matrix products' FLOPs (a sparse operand by its
    non-zeros) and times each product where it runs; the epochs' FLOPs are those of an
    ``--epochs`` fit minus those of a one-epoch fit, per epoch. The machine's rate: one thread,
    a 2048 x 2048 float32 product (the peak that MKL reaches) and the step's own product shapes
    as they ran. The floor is the epoch's dense FLOPs at the peak rate: no code that computes
    this model in float32 on one core can take less.
    """
    import dataclasses
    from collections import defaultdict

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    train, _ = _train_module()

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.flops, self.seconds = defaultdict(float), defaultdict(float)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counted = _matmul_flops(func, args)
            if counted is None:
                return func(*args, **(kwargs or {}))
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            key = ("sparse" if counted[2] else "dense", counted[0])
            self.seconds[key] += time.perf_counter() - start
            self.flops[key] += counted[1]
            return out

    def fit(epochs: int) -> tuple[Counter, list[float]]:
        options = dataclasses.replace(train.Options(), epochs=epochs, patience=epochs + 1, device="cpu", seed=0,
                                      pretrain_epochs=0, **_overrides(args.set))
        inputs = torch.load(_inputs_path(args), weights_only=False)
        problem, graph, split = _problem_and_graph(inputs)
        with Counter() as counter:
            _, history, _ = train.fit(problem, graph, split, options=options, device="cpu")
        return counter, history["seconds"].tolist()

    def rate(m: int, k: int, n: int, repeats: int = 5) -> float:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2.0 * m * k * n * repeats / (time.perf_counter() - start)

    one, _ = fit(1)
    many, seconds = fit(args.epochs)
    epochs = args.epochs - 1
    plain = _result(_launch(ROOT, _inputs_path(args), epochs=args.epochs, overrides=tuple(args.set)))
    epoch_s = _median_after_first(plain["epoch_seconds"])
    peak = max(rate(2048, 2048, 2048) for _ in range(3))
    rows = []
    for key in sorted(many.flops):
        flops = (many.flops[key] - one.flops.get(key, 0.0)) / epochs
        secs = (many.seconds[key] - one.seconds.get(key, 0.0)) / epochs
        rows.append({"kind": key[0], "op": key[1], "gflop_per_epoch": flops / 1e9, "seconds_per_epoch": secs,
                     "gflop_per_s": flops / secs / 1e9 if secs else float("nan")})
    dense = sum(r["gflop_per_epoch"] for r in rows if r["kind"] == "dense") * 1e9
    summary = {"problem": args.kind, "genes": args.genes, "set": " ".join(args.set), "epoch_s": epoch_s,
               "epoch_s_counted": float(sum(seconds[1:]) / epochs) if epochs else float("nan"),
               "matmul_s_per_epoch": sum(r["seconds_per_epoch"] for r in rows),
               "dense_gflop_per_epoch": dense / 1e9,
               "sparse_gflop_per_epoch": sum(r["gflop_per_epoch"] for r in rows if r["kind"] == "sparse"),
               "peak_gflop_per_s": peak / 1e9, "floor_epoch_s": dense / peak, "load": _load(), "threads": 1}
    for row in rows:
        print(row)
    print(json.dumps(summary))
    if args.out:
        import pandas as pd

        pd.DataFrame([{**summary, **row} for row in rows]).to_csv(args.out, sep="\t", index=False,
                                                                   float_format="%.4g")


def _inputs_path(args: argparse.Namespace) -> Path:
    directory = Path(tempfile.gettempdir()) / "grape-train-speed-inputs"
    directory.mkdir(exist_ok=True)
    return _inputs(args.kind, args.genes, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--code", required=True)
    w.add_argument("--inputs", required=True)
    w.add_argument("--epochs", type=int, default=5)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--pretrain-epochs", type=int, default=0)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--metrics", action="store_true")
    w.add_argument("--profile", action="store_true")
    w.add_argument("--rows", type=int, default=25)
    w.add_argument("--set", nargs="*", default=[], help="integer option overrides, key=value")
    s = sub.add_parser("speed")
    s.add_argument("--old", required=True, help="checkout of the old code (commit da19230)")
    s.add_argument("--old-epochs", type=int, default=3)
    s.add_argument("--new-epochs", type=int, default=10)
    s.add_argument("--kinds", nargs="+", default=["demo", "carpool", "random"],
                   help="problems to run (demo carpool random)")
    s.add_argument("--old-set", nargs="*", default=[], help="integer option overrides of the old run, key=value")
    s.add_argument("--new-set", nargs="*", default=[], help="integer option overrides of the new run, key=value")
    s.add_argument("--out", type=Path)
    c = sub.add_parser("scaling")
    c.add_argument("--genes", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--out", type=Path)
    m = sub.add_parser("metrics")
    m.add_argument("--old", default="", help="old code checkout; none: gsl_refresh 1 against the default")
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    m.add_argument("--epochs", type=int, default=40)
    m.add_argument("--pretrain-epochs", type=int, default=20)
    m.add_argument("--out", type=Path)
    p = sub.add_parser("profile")
    p.add_argument("--code", default=str(ROOT))
    p.add_argument("--kind", default="carpool")
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rows", type=int, default=25)
    f = sub.add_parser("flops")
    f.add_argument("--kind", default="carpool")
    f.add_argument("--genes", type=int, default=2000)
    f.add_argument("--epochs", type=int, default=3)
    f.add_argument("--set", nargs="*", default=[], help="integer option overrides, key=value")
    f.add_argument("--out", type=Path)
    args = parser.parse_args()
    commands = {"flops": flops_cmd, "worker": worker, "speed": speed, "scaling": scaling, "metrics": metrics, "profile": profile_cmd}
    commands[args.command](args)


if __name__ == "__main__":
    main()
