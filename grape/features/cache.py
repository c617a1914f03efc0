"""Content-keyed embedding cache, stored in checksummed shards.

A featuriser (a model with its pooling, lengths and dtype, or the k-mer profile with its
k) has an *identity*, a small JSON-able dict; the sha256 of that dict names its cache
directory, ``<root>/<key>/``, where ``identity.json`` records it for people. Each entry is
keyed by the sha256 of the text or sequence itself, so a gene whose description is edited
computes again and a new gene computes only itself, whatever the gene is called.

Entries are stored in shard files of a few thousand vectors
(``shard-<sha256>.safetensors``: ``digests`` uint8 [n, 32] and ``vectors`` float32
[n, dim]), never one file per gene: 20,000 genes are a handful of files. The file name is
the sha256 of the shard's content, checked on every read: a truncated or damaged shard is
reported, deleted and its entries recomputed, never loaded. Shards are written atomically
(temporary file, then rename) and never modified, so concurrent jobs (one per GPU) can
share a cache directory: the worst a race can do is compute an entry twice. When a
directory holds too many shards they are compacted into full ones (the new shards are
written before the old ones are removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grape.io.files import atomic_path, sha256_text, write_text_atomic

log = logging.getLogger(__name__)

DIGEST_SIZE = 32  # sha256
SHARD_ROWS = 4096  # entries per shard file (and genes computed between two writes)
MAX_SHARDS = 64  # compact a directory holding more shard files than this


def digest(item: str) -> bytes:
    """Raw sha256 of one text or sequence (UTF-8): the key of its cache entry."""
    return hashlib.sha256(item.encode("utf-8")).digest()


def identity_key(identity: dict[str, Any]) -> str:
    """Name of a featuriser's cache directory: sha256 of its identity (sorted JSON), shortened."""
    return sha256_text(json.dumps(identity, sort_keys=True, separators=(",", ":")))[:24]


def _checksum(digests: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{vectors.shape[0]},{vectors.shape[1]};".encode())
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()


class CorruptShard(ValueError):
    """A shard file that cannot be read or whose content does not match its checksum."""


class ShardedCache:
    """Vectors keyed by content digest, in checksummed shard files under ``root/<identity key>/``."""

    def __init__(self, root: str | Path, identity: dict[str, Any], *, shard_rows: int = SHARD_ROWS,
                 max_shards: int = MAX_SHARDS) -> None:
        self.identity = dict(identity)
        self.key = identity_key(self.identity)
        self.dir = Path(root) / self.key
        self.shard_rows = shard_rows
        self.max_shards = max_shards

    # ------------------------------------------------------------------ files

    def shard_paths(self) -> list[Path]:
        """Finished shard files (temporary files of writers in progress start with a dot)."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("shard-*.safetensors"))

    @staticmethod
    def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Digests [n, 32] and vectors [n, dim] of one shard; :class:`CorruptShard` when damaged.

        Raises FileNotFoundError when the file vanished (compacted by another job).
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load

        raw = path.read_bytes()
        try:
            data = load(raw)
            digests, vectors = data["digests"], data["vectors"]
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise CorruptShard(f"unreadable ({type(err).__name__}: {err})") from err
        if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != DIGEST_SIZE:
            raise CorruptShard(f"bad digests array {digests.dtype} {digests.shape}")
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != digests.shape[0]:
            raise CorruptShard(f"bad vectors array {vectors.dtype} {vectors.shape}")
        expected = path.name.removeprefix("shard-").removesuffix(".safetensors")
        if _checksum(digests, vectors) != expected:
            raise CorruptShard("checksum mismatch")
        return digests, vectors

    def _load_all(self) -> list[tuple[Path, np.ndarray, np.ndarray]]:
        shards = []
        for path in self.shard_paths():
            try:
                digests, vectors = self.read_shard(path)
            except FileNotFoundError:
                continue  # removed by a concurrent compaction; its entries live in the new shards
            except CorruptShard as err:
                log.warning("embedding cache shard %s is corrupt (%s): deleted, its entries will be recomputed",
                            path, err)
                path.unlink(missing_ok=True)
                continue
            shards.append((path, digests, vectors))
        return shards

    # ------------------------------------------------------------------ API

    def lookup(self, digests: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """Which of ``digests`` are cached, and their vectors.

        Returns ``(found, vectors)``: a boolean mask over ``digests`` and the vectors of the
        found ones in the same order (``None`` when nothing is found).
        """
        shards = self._load_all()
        if not shards or not digests:
            return np.zeros(len(digests), dtype=bool), None
        dims = {vectors.shape[1] for _, _, vectors in shards}
        if len(dims) > 1:
            raise ValueError(f"embedding cache {self.dir} mixes vector sizes {sorted(dims)}; delete the directory")
        all_vectors = np.concatenate([v for _, _, v in shards])
        raw = b"".join(d.tobytes() for _, d, _ in shards)
        index = {raw[i : i + DIGEST_SIZE]: row for row, i in enumerate(range(0, len(raw), DIGEST_SIZE))}
        rows = np.array([index.get(d, -1) for d in digests], dtype=np.int64)
        found = rows >= 0
        return found, (all_vectors[rows[found]] if found.any() else None)

    def put(self, digests: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors as new shard files (atomically), then compact when there are too many."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(digests) != len(vectors):
            raise ValueError(f"{len(digests)} digests but {len(vectors)} vectors")
        if not len(digests):
            return
        self._write_identity()
        packed = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, DIGEST_SIZE)
        for start in range(0, len(packed), self.shard_rows):
            self._write_shard(packed[start : start + self.shard_rows], vectors[start : start + self.shard_rows])
        if len(self.shard_paths()) > self.max_shards:
            self.compact()

    def compact(self) -> None:
        """Rewrite all shards as full ones (duplicates dropped); old files removed after the new are written."""
        shards = self._load_all()
        if not shards:
            return
        digests = np.concatenate([d for _, d, _ in shards])
        vectors = np.concatenate([v for _, _, v in shards])
        _, first = np.unique(digests.view(f"V{DIGEST_SIZE}").ravel(), return_index=True)
        first.sort()
        digests, vectors = digests[first], vectors[first]
        written = set()
        for start in range(0, len(digests), self.shard_rows):
            written.add(self._write_shard(digests[start : start + self.shard_rows], vectors[start : start + self.shard_rows]))
        for path, _, _ in shards:
            if path not in written:
                path.unlink(missing_ok=True)
        log.info("embedding cache %s compacted: %d shards -> %d (%d entries)", self.dir, len(shards), len(written),
                 len(digests))

    def _write_shard(self, digests: np.ndarray, vectors: np.ndarray) -> Path:
        from safetensors.numpy import save_file

        digests = np.ascontiguousarray(digests, dtype=np.uint8)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        path = self.dir / f"shard-{_checksum(digests, vectors)}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"digests": digests, "vectors": vectors}, str(tmp))
        return path

    def _write_identity(self) -> None:
        path = self.dir / "identity.json"
        if not path.exists():
            write_text_atomic(path, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")


Compute = Callable[[list[str]], np.ndarray]


def cached_features(
    items: Sequence[str],
    compute: Compute,
    *,
    cache: ShardedCache,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, int]:
    """Features of ``items`` (texts or sequences), computing only those not in ``cache``.

    Identical items are computed once. ``compute`` maps a list of items to a [n, dim]
    matrix; when it has ``begin(n_total)`` / ``end()`` methods they are called around the
    chunks. The missing items are computed ``chunk_size`` at a
    time (default: the cache's shard size) and each chunk is stored as soon as it is done,
    so an interrupted job keeps its progress. Returns the float32 matrix in the order of
    ``items`` and the number of distinct items computed.
    """
    digests = [digest(item) for item in items]
    unique: dict[bytes, str] = {}
    for d, item in zip(digests, items):
        unique.setdefault(d, item)
    keys = list(unique)
    found, found_vectors = cache.lookup(keys)
    table: dict[bytes, np.ndarray] = {}
    if found_vectors is not None:
        table.update(zip((k for k, f in zip(keys, found) if f), found_vectors))
    todo = [k for k, f in zip(keys, found) if not f]
    chunk_size = chunk_size or cache.shard_rows
    if todo and hasattr(compute, "begin"):
        compute.begin(len(todo))  # e.g. one progress bar over all chunks
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        vectors = np.asarray(compute([unique[k] for k in chunk]), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(chunk):
            raise RuntimeError(f"featuriser returned shape {vectors.shape} for {len(chunk)} items")
        cache.put(chunk, vectors)
        table.update(zip(chunk, vectors))
    if todo and hasattr(compute, "end"):
        compute.end()
    if not digests:
        return np.zeros((0, 0), dtype=np.float32), 0
    return np.stack([table[d] for d in digests]).astype(np.float32, copy=False), len(todo)
