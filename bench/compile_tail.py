"""Does ``torch.compile`` pay for the message-passing layer's elementwise work on this machine?

The memory-bound part of a training step (BENCHMARKS.md, training speed) is the tail of each
:class:`grape.model.gnn.RelationAttentionLayer`: GELU of the update, dropout, the residual and the
layer norm over the ``[N, S, hidden]`` condition states. This times that tail, forward and
backward, eager against ``torch.compile`` (inductor), at CaRPool's size by default (1,780 nodes,
34 injection sets of a batch of 16 with doubles, hidden 64), with and without dropout (compiled
dropout draws other random numbers than eager, so it would change the model's computation).

    .venv/bin/python bench/compile_tail.py --threads 1 --out bench/compile_tail.tsv
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch


def timed(fn, x: torch.Tensor, res: torch.Tensor, reps: int) -> float:
    for _ in range(3):  # warm-up (and, compiled, the compilation)
        fn(x, res).sum().backward()
    start = time.perf_counter()
    for _ in range(reps):
        fn(x, res).sum().backward()
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1780)
    parser.add_argument("--sets", type=int, default=34)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for p in (0.1, 0.0):
        norm = torch.nn.LayerNorm(args.hidden)
        dropout = torch.nn.Dropout(p) if p else torch.nn.Identity()

        def tail(x, res):
            return norm(res + dropout(torch.nn.functional.gelu(x)))

        x = torch.randn(args.nodes, args.sets, args.hidden, requires_grad=True)
        res = torch.randn(args.nodes, args.sets, args.hidden, requires_grad=True)
        compiled = torch.compile(tail)
        start = time.perf_counter()
        compiled(x, res).sum().backward()
        compile_s = time.perf_counter() - start
        eager_s, compiled_s = timed(tail, x, res, args.reps), timed(compiled, x, res, args.reps)
        rows.append({"dropout": p, "nodes": args.nodes, "sets": args.sets, "hidden": args.hidden,
                     "threads": args.threads, "eager_ms": 1e3 * eager_s, "compiled_ms": 1e3 * compiled_s,
                     "speedup": eager_s / compiled_s, "compile_s": compile_s,
                     "load_1_5_15": " ".join(f"{v:.2f}" for v in os.getloadavg())})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out is not None:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
