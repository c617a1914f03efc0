"""Peak memory and time of one GRAPE training step on a transcriptome-sized random graph.

Builds a graph of ``--genes`` genes with random text (384-d) and DNA (136-d) features,
the sparse prior (chunked top-k, as ``grape graph`` does), and runs one optimisation step
of the full model (structure learning on, doubles additive) on a batch of singles and
doubles, all in one forward pass. Reports the process's peak resident memory
(``ru_maxrss``) after each phase, and the times.

    .venv/bin/python bench/model_memory.py --genes 20000 --out bench/model_memory.tsv
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from grape.graph.build import prior_edges
from grape.model.gnn import GRAPE, GraphTensors, ModelConfig

log = logging.getLogger("bench.model_memory")


def peak_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=16, help="conditions per step (half singles, half doubles)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="TSV of the figures")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.genes
    rows = [{"phase": "start", "seconds": 0.0, "peak_rss_gib": peak_gib()}]

    start = time.perf_counter()
    text = torch.nn.functional.normalize(torch.randn(n, 384), dim=1)
    dna = torch.rand(n, 136)
    edge_index, weight = prior_edges([text, dna], top_k=args.top_k, min_similarity=-1.0, chunk_size=4096)
    rows.append({"phase": "prior graph (chunked top-k)", "seconds": time.perf_counter() - start,
                 "peak_rss_gib": peak_gib()})
    log.info("prior: %d edges", edge_index.shape[1])

    node_type = (torch.rand(n) < 0.3).long()  # 70% coding, 30% non-coding
    graph = GraphTensors({"text": text, "dna": (dna - dna.mean(0)) / dna.std(0)}, torch.randn(n, 2), node_type,
                         ("coding", "noncoding"), edge_index, weight).to(args.device)
    config = ModelConfig(hidden=args.hidden, gsl_k=args.top_k)
    model = GRAPE(num_nodes=n, modality_dims={"text": 384, "dna": 136}, context_dim=2,
                  node_types=("coding", "noncoding"), config=config).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = args.batch_size
    perturbed = torch.full((b, 2), -1, dtype=torch.long)
    perturbed[:, 0] = torch.randint(n, (b,))
    perturbed[b // 2 :, 1] = torch.randint(n, (b - b // 2,))
    target = torch.randn(b, n, device=args.device)

    start = time.perf_counter()
    model.train()
    optimizer.zero_grad()
    pred, graph_loss = model(graph, perturbed.to(args.device), with_graph_loss=True)
    loss = torch.nn.functional.mse_loss(pred, target) + 0.1 * graph_loss
    loss.backward()
    optimizer.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    step = time.perf_counter() - start
    rows.append({"phase": "one training step (forward + backward + AdamW)", "seconds": step,
                 "peak_rss_gib": peak_gib()})
    if args.device.startswith("cuda"):
        rows[-1]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    params = sum(p.numel() for p in model.parameters())
    table = pd.DataFrame(rows).assign(genes=n, batch=b, prior_edges=edge_index.shape[1], parameters=params,
                                      threads=torch.get_num_threads(), device=args.device)
    log.info("\n%s", table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.3f")


if __name__ == "__main__":
    main()
