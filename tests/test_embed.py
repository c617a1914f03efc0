"""The embed stage: k-mer profiles, the sharded content-keyed cache, and the stage's three modes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grape.features import embed

from grape.features import cache as embed_cache
from grape.features.embed import Options, kmer_profile, kmer_vocabulary
from grape.features.store import load_features
from grape.stages import embed as embed_stage
from grape.features.cache import ShardedCache, cached_features, digest


def revcomp(seq: str) -> str:
    return seq.translate(str.maketrans("ACGT", "TGCA"))[::-1]


# --------------------------------------------------------------------------- k-mers


def test_kmer_profile_hand_counts_non_canonical():
    vocab = kmer_vocabulary(2, canonical=False)
    assert len(vocab) == 16 and vocab[:3] == ["AA", "AC", "AG"]
    # ACGTAC: AC, CG, GT, TA, AC
    prof = kmer_profile(["ACGTAC"], k=2, canonical=False)[0]
    expected = np.zeros(16)
    for kmer, count in {"AC": 2, "CG": 1, "GT": 1, "TA": 1}.items():
        expected[vocab.index(kmer)] = count / 5
    np.testing.assert_allclose(prof, expected, atol=1e-7)


def test_kmer_profile_lowercase_counts_like_uppercase():
    np.testing.assert_array_equal(
        kmer_profile(["acgtac"], k=2, canonical=False), kmer_profile(["ACGTAC"], k=2, canonical=False)
    )


def test_kmer_profile_skips_windows_with_n():
    vocab = kmer_vocabulary(2, canonical=False)
    # AC, CN (skip), NG (skip), GT
    prof = kmer_profile(["ACNGT"], k=2, canonical=False)[0]
    expected = np.zeros(16)
    expected[vocab.index("AC")] = 0.5
    expected[vocab.index("GT")] = 0.5
    np.testing.assert_allclose(prof, expected, atol=1e-7)
    # only N: no valid k-mer, zero row
    assert not kmer_profile(["NNNN"], k=2, canonical=False).any()


def test_canonical_profile_merges_reverse_complement():
    seq = "AAACGTTGCAGGATTTCCA"
    a, b = kmer_profile([seq, revcomp(seq)], k=3, canonical=True)
    np.testing.assert_allclose(a, b, atol=1e-7)
    # and non-canonically they differ, so the merge is what makes them equal
    x, y = kmer_profile([seq, revcomp(seq)], k=3, canonical=False)
    assert not np.allclose(x, y)
    # AAAA (k=2): AA x3, merged with TT into the column "AA"
    vocab = kmer_vocabulary(2, canonical=True)
    prof = kmer_profile(["AAAA", "TTTT"], k=2, canonical=True)
    assert prof[0, vocab.index("AA")] == pytest.approx(1.0)
    np.testing.assert_array_equal(prof[0], prof[1])


def test_profile_rows_sum_to_one():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGTN"), size=n)) for n in (10, 57, 200)]
    for canonical in (True, False):
        prof = kmer_profile(seqs, k=4, canonical=canonical)
        assert prof.shape == (3, 136 if canonical else 256)
        np.testing.assert_allclose(prof.sum(1), 1.0, atol=1e-5)


def test_canonical_vocabulary_size():
    vocab = kmer_vocabulary(4, canonical=True)
    assert len(vocab) == 136
    assert len(set(vocab)) == 136
    assert all(k <= revcomp(k) for k in vocab)


# --------------------------------------------------------------------------- cache


class Counter:
    """compute function that records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, items: list[str]) -> np.ndarray:
        self.calls.append(list(items))
        return expected(items)

    @property
    def computed(self) -> list[str]:
        return [s for call in self.calls for s in call]


def expected(items):
    return np.array([[len(s), ord(s[0]), sum(map(ord, s)) % 97] for s in items], dtype=np.float32)


IDENTITY = {"featuriser": "test", "version": 1}


def test_second_call_computes_nothing(tmp_path):
    compute = Counter()
    first, n1 = cached_features(["alpha", "beta", "gamma"], compute, cache=ShardedCache(tmp_path, IDENTITY))
    second, n2 = cached_features(["alpha", "beta", "gamma"], compute, cache=ShardedCache(tmp_path, IDENTITY))
    assert (n1, n2) == (3, 0)
    assert len(compute.calls) == 1
    np.testing.assert_array_equal(first, expected(["alpha", "beta", "gamma"]))
    np.testing.assert_array_equal(second, first)
    _, n3 = cached_features(["gamma", "alpha"], compute, cache=ShardedCache(tmp_path, IDENTITY))
    assert n3 == 0 and len(compute.calls) == 1


def test_new_items_compute_only_themselves_and_an_edit_recomputes_one(tmp_path):
    cache = ShardedCache(tmp_path, IDENTITY)
    compute = Counter()
    items = [f"description of gene {i}" for i in range(50)]
    cached_features(items, compute, cache=cache)
    more = items + [f"new gene {i}" for i in range(10)]
    out, n = cached_features(more, compute, cache=cache)
    assert n == 10 and sorted(compute.calls[-1]) == sorted(more[50:])
    np.testing.assert_array_equal(out, expected(more))
    edited = list(more)
    edited[7] = "an edited description"
    out, n = cached_features(edited, compute, cache=cache)
    assert n == 1 and compute.calls[-1] == ["an edited description"]
    np.testing.assert_array_equal(out, expected(edited))


def test_identity_is_part_of_the_key(tmp_path):
    compute = Counter()
    cached_features(["alpha"], compute, cache=ShardedCache(tmp_path, {"model": "a", "pooling": "mean"}))
    _, n = cached_features(["alpha"], compute, cache=ShardedCache(tmp_path, {"model": "a", "pooling": "last"}))
    assert n == 1
    same = ShardedCache(tmp_path, {"pooling": "mean", "model": "a"})  # key order does not matter
    _, n = cached_features(["alpha"], compute, cache=same)
    assert n == 0
    assert (same.dir / "identity.json").is_file()


def test_duplicates_are_computed_once(tmp_path):
    compute = Counter()
    out, n = cached_features(["x1", "yy", "x1", "x1"], compute, cache=ShardedCache(tmp_path, IDENTITY))
    assert n == 2 and sorted(compute.computed) == ["x1", "yy"]
    np.testing.assert_array_equal(out, expected(["x1", "yy", "x1", "x1"]))


def test_entries_are_written_in_shards_chunk_by_chunk(tmp_path):
    cache = ShardedCache(tmp_path, IDENTITY, shard_rows=100)
    compute = Counter()
    items = [f"gene {i}" for i in range(1000)]
    cached_features(items, compute, cache=cache)
    assert len(cache.shard_paths()) == 10  # not one file per gene
    assert [len(c) for c in compute.calls] == [100] * 10  # each chunk stored once computed


def test_many_small_writes_are_compacted(tmp_path):
    cache = ShardedCache(tmp_path, IDENTITY, shard_rows=50, max_shards=8)
    compute = Counter()
    items = []
    for i in range(20):  # 20 runs adding 3 genes each
        items += [f"gene {i}-{j}" for j in range(3)]
        cached_features(items, compute, cache=cache)
    assert len(cache.shard_paths()) <= 8
    out, n = cached_features(items, compute, cache=cache)
    assert n == 0
    np.testing.assert_array_equal(out, expected(items))


def corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bitflip":  # still a valid safetensors file: only the checksum can tell
        raw[-3] ^= 0x01
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(b"not a safetensors file" + b"\0" * 64)


@pytest.mark.parametrize("damage", ["truncate", "empty", "bitflip", "garbage"])
def test_corrupt_shard_is_detected_deleted_and_recomputed(tmp_path, damage, caplog):
    cache = ShardedCache(tmp_path, IDENTITY, shard_rows=2)
    compute = Counter()
    items = ["alpha", "beta", "gamma", "delta"]
    cached_features(items, compute, cache=cache)
    shards = cache.shard_paths()
    assert len(shards) == 2
    digests, _ = ShardedCache.read_shard(shards[0])
    in_damaged = {item for item in items if np.frombuffer(digest(item), np.uint8).tolist() in digests.tolist()}
    corrupt(shards[0], damage)
    with caplog.at_level(logging.WARNING, logger="grape.features.cache"):
        out, n = cached_features(items, compute, cache=cache)
    assert "corrupt" in caplog.text and shards[0].name in caplog.text
    assert n == 2 and set(compute.calls[-1]) == in_damaged  # only the damaged shard's entries
    np.testing.assert_array_equal(out, expected(items))  # nothing from the damaged file was used
    # rewritten whole: the same entries make the same content, hence the same (now valid) file
    ShardedCache.read_shard(shards[0])
    _, n = cached_features(items, compute, cache=cache)
    assert n == 0


def test_cache_hits_for_20000_genes_compute_nothing(tmp_path):
    """20,000 cached genes across shard files are all hits; their speed is measured in bench/embed_bench.py."""
    items = [f"gene {i} " + "description words " * 20 for i in range(20_000)]
    vectors = np.random.default_rng(0).standard_normal((len(items), 384)).astype(np.float32)
    cache = ShardedCache(tmp_path, IDENTITY)
    cache.put([digest(s) for s in items], vectors)
    assert len(cache.shard_paths()) == 5

    def never(_items):
        raise AssertionError("recomputed a cached item")

    out, n = cached_features(items, never, cache=ShardedCache(tmp_path, IDENTITY))
    assert n == 0
    np.testing.assert_array_equal(out, vectors)


# --------------------------------------------------------------------------- stage


def write_inputs(tmp_path: Path, descriptions: list[str] | None = None) -> tuple[Path, Path]:
    table = pd.DataFrame({
        "gene": ["GA", "GB", "GC", "GD"],
        "gene_id": ["ENSG01", "ENSG02", "ENSG03", "ENSG04"],
        "biotype": ["protein_coding", "lncRNA", "protein_coding", "miRNA"],
        "description": descriptions or ["GA is a kinase.", "GB is a long non-coding RNA.", "GC is a transporter.",
                                        "GD is a microRNA."],
        "source": ["table", "table", "fallback", "table"],
    })
    desc = tmp_path / "descriptions.tsv"
    table.to_csv(desc, sep="\t", index=False)
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(
        ">ENSG03 GC ENST03\nACGTACGTAA\nCCGGTT\n"
        ">ENSG01 GA ENST01\nAAAACCCCGGGGTTTT\n"
        ">ENSG04 GD ENST04\nGGGCCCATAT\n"
    )
    return desc, fasta


def stage_paths(tmp_path: Path, desc: Path, fasta: Path) -> dict:
    return dict(descriptions=desc, sequences=fasta, cache_dir=tmp_path / "cache",
                text_out=tmp_path / "text.npz", dna_out=tmp_path / "dna.npz")


def messages(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_run_writes_features_and_second_run_computes_nothing(tmp_path, caplog, monkeypatch):
    desc, fasta = write_inputs(tmp_path)
    paths = stage_paths(tmp_path, desc, fasta)
    options = Options(kmer_k=2, kmer_canonical=False, device="cpu")
    with caplog.at_level(logging.INFO, logger="grape.features.embed"):
        embed_stage.run(options=options, **paths)
    assert "text: 4 genes, 4 computed" in caplog.text

    genes, text, meta = load_features(paths["text_out"])
    assert genes == ["GA", "GB", "GC", "GD"]
    assert text.shape == (4, 384) and meta["dim"] == 384 and meta["pooling"] == "mean"
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)

    genes, dna, meta = load_features(paths["dna_out"])
    assert genes == ["GA", "GB", "GC", "GD"]
    assert meta["has_sequence"] == [True, False, True, True]
    assert meta["k"] == 2 and meta["canonical"] is False
    assert not dna[1].any()  # GB has no sequence
    np.testing.assert_allclose(dna[0], kmer_profile(["AAAACCCCGGGGTTTT"], k=2, canonical=False)[0])
    np.testing.assert_allclose(dna[2], kmer_profile(["ACGTACGTAACCGGTT"], k=2, canonical=False)[0])

    # second run: everything from the cache; the featurisers are never called
    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached item")

    monkeypatch.setattr(embed.TransformerEmbedder, "__call__", boom)
    monkeypatch.setattr(embed.KmerFeaturiser, "__call__", boom)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="grape.features.embed"):
        embed_stage.run(options=options, **paths)
    assert messages(caplog, "text:")[0].startswith("text: 4 genes, 0 computed, 4 from cache")
    assert "0 computed" in messages(caplog, "dna:")[0]
    genes2, text2, _ = load_features(paths["text_out"])
    assert genes2 == genes
    np.testing.assert_array_equal(text2, text)


def test_editing_one_description_recomputes_one(tmp_path, caplog):
    desc, fasta = write_inputs(tmp_path)
    paths = stage_paths(tmp_path, desc, fasta)
    embed_stage.run(options=Options(device="cpu"), **paths)
    _, before, _ = load_features(paths["text_out"])
    write_inputs(tmp_path, ["GA is a kinase.", "GB was edited.", "GC is a transporter.", "GD is a microRNA."])
    with caplog.at_level(logging.INFO, logger="grape.features.embed"):
        embed_stage.run(options=Options(device="cpu"), **paths)
    assert messages(caplog, "text:")[0].startswith("text: 4 genes, 1 computed, 3 from cache")
    assert "0 computed" in messages(caplog, "dna:")[0]
    _, after, _ = load_features(paths["text_out"])
    np.testing.assert_array_equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert not np.allclose(after[1], before[1])


def test_plan_shards_and_merge_equal_one_job(tmp_path):
    desc, fasta = write_inputs(tmp_path)
    options = Options(kmer_k=3, device="cpu")
    whole = tmp_path / "whole"
    embed_stage.run(options=options, **stage_paths(whole, desc, fasta))
    plans = [tmp_path / f"genes.{i}.txt" for i in range(3)]
    embed_stage.run(options=options, descriptions=desc, sequences=fasta, plan_out=plans)
    lists = [embed.read_gene_list(p) for p in plans]
    assert [(i, n) for _, i, n in lists] == [(0, 3), (1, 3), (2, 3)]
    assert sorted(g for genes, _, _ in lists for g in genes) == ["GA", "GB", "GC", "GD"]
    for i, plan in enumerate(plans):
        embed_stage.run(options=options, descriptions=desc, sequences=fasta, genes=plan,
                        cache_dir=tmp_path / "shared_cache", text_out=tmp_path / f"text.{i}.npz",
                        dna_out=tmp_path / f"dna.{i}.npz")
    embed_stage.run(options=options, descriptions=desc, text_parts=[tmp_path / f"text.{i}.npz" for i in range(3)],
                    dna_parts=[tmp_path / f"dna.{i}.npz" for i in range(3)], text_out=tmp_path / "text.npz",
                    dna_out=tmp_path / "dna.npz")
    for name in ("text", "dna"):
        genes_a, a, meta_a = load_features(whole / f"{name}.npz")
        genes_b, b, meta_b = load_features(tmp_path / f"{name}.npz")
        assert genes_a == genes_b
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert meta_a["cache_key"] == meta_b["cache_key"]
    assert load_features(tmp_path / "dna.npz")[2]["has_sequence"] == [True, False, True, True]


def test_more_shards_than_genes_and_a_missing_shard(tmp_path):
    desc, fasta = write_inputs(tmp_path)
    options = Options(device="cpu")
    plans = [tmp_path / f"genes.{i}.txt" for i in range(6)]
    embed_stage.run(options=options, descriptions=desc, sequences=fasta, plan_out=plans)
    assert sum(len(embed.read_gene_list(p)[0]) == 0 for p in plans) == 2
    for i, plan in enumerate(plans):
        embed_stage.run(options=options, descriptions=desc, sequences=fasta, genes=plan, cache_dir=tmp_path / "c",
                        text_out=tmp_path / f"t{i}.npz", dna_out=tmp_path / f"d{i}.npz")
    assert load_features(tmp_path / "t5.npz")[1].shape == (0, 384)
    with pytest.raises(ValueError, match="is in no text shard"):
        embed_stage.run(options=options, descriptions=desc, text_parts=[tmp_path / f"t{i}.npz" for i in range(1, 6)],
                        dna_parts=[tmp_path / f"d{i}.npz" for i in range(1, 6)], text_out=tmp_path / "t.npz",
                        dna_out=tmp_path / "d.npz")
    assert not (tmp_path / "t.npz").exists()


def test_plan_balances_the_work():
    shards = embed.plan_shards([100, 1, 1, 50, 50, 2], 2)
    loads = [sum([100, 1, 1, 50, 50, 2][r] for r in s) for s in shards]
    assert sorted(loads) == [102, 102]
    assert sorted(r for s in shards for r in s) == list(range(6))


def test_run_fails_on_missing_model_before_writing(tmp_path):
    desc, fasta = write_inputs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"embed\.text_model"):
        embed_stage.run(options=Options(text_model=str(tmp_path / "nope")), **stage_paths(tmp_path, desc, fasta))
    assert not (tmp_path / "text.npz").exists()
    with pytest.raises(FileNotFoundError, match=r"embed\.dna_model"):
        embed_stage.run(options=Options(dna_model=str(tmp_path / "nope")), **stage_paths(tmp_path, desc, fasta))
    assert not (tmp_path / "text.npz").exists()


def test_bad_inputs_are_named(tmp_path):
    desc, fasta = write_inputs(tmp_path)
    with pytest.raises(ValueError, match="embed.dna_stride"):
        embed_stage.run(options=Options(dna_window=10, dna_stride=20), **stage_paths(tmp_path, desc, fasta))
    bad = tmp_path / "bad.tsv"
    bad.write_text("gene\tdescription\nGA\tx\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: missing column\(s\) gene_id"):
        embed_stage.run(options=Options(), **stage_paths(tmp_path, bad, fasta))
    gene_list = tmp_path / "genes.txt"
    gene_list.write_text("# shard 0 of 1\nGA\nGZ\n")
    with pytest.raises(ValueError, match="gene 'GZ' is not in"):
        embed_stage.run(options=Options(), genes=gene_list, **stage_paths(tmp_path, desc, fasta))


def test_cache_module_is_used_by_the_stage():
    assert embed.cached_features is embed_cache.cached_features
