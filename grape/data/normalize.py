"""What scale ``X`` is on, and raw counts normalised the way scanpy does.

``dataset.normalize: auto`` (the default) looks at a sample of rows of ``X``:

raw counts
    non-negative whole numbers (UMI counts): each row is scaled to 1e4 in total and
    ``log1p``-transformed, as ``scanpy.pp.normalize_total(target_sum=1e4)`` followed by
    ``scanpy.pp.log1p`` (rows with no counts stay zero). Sparse ``X`` stays sparse; the
    result is float32.
log-like
    non-negative values, not all whole numbers, no larger than :data:`LOG_SCALE_MAX`
    (log1p of counts per 1e4 reaches about 9; log2 of counts per million about 20): used
    as it is. With ``dataset.relative`` (changes from control) negative values are expected
    and only the magnitude is checked.
neither
    negative values without ``dataset.relative`` (scaled or z-scored data), or values far
    above any log scale (normalised but not logged): refused with a
    :class:`grape.data.dataset.DatasetError` naming the file, what was seen and the fix. When ``X``
    is neither but ``layers['counts']`` holds raw counts, the counts are normalised instead.

``dataset.normalize: none`` trusts ``X`` as it is. :func:`normalize_dataset` records what it
did in ``adata.uns['grape_normalize']``, so a second call on the same object does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from grape.data.dataset import DatasetError, DatasetOptions

log = logging.getLogger(__name__)

#: Largest value of a log-normalised ``X`` (log2 of counts per billion is 30).
LOG_SCALE_MAX = 30.0
#: Total of every row after normalisation (scanpy's ``target_sum``).
TARGET_SUM = 1e4
#: Rows of ``X`` inspected (evenly spaced over the file).
SAMPLE_ROWS = 2000
COUNTS_LAYER = "counts"
UNS_KEY = "grape_normalize"


@dataclass(frozen=True)
class XScale:
    """What a sample of rows of a matrix shows."""

    kind: str  # counts | log | relative | empty
    rows_sampled: int
    min: float
    max: float
    integer: bool  # every sampled value is a whole number

    def describe(self) -> str:
        whole = "whole numbers" if self.integer else "not all whole numbers"
        return f"{self.rows_sampled} sampled rows, min {self.min:.4g}, max {self.max:.4g}, {whole}"


@dataclass(frozen=True)
class Plan:
    """What :func:`normalize_dataset` does to a dataset: the scale seen and the action."""

    source: str  # "X" or "layers['counts']": the matrix that X will hold
    scale: XScale
    action: str  # normalize | none
    mode: str  # dataset.normalize

    def message(self, file: str) -> str:
        if self.mode == "none":
            return f"{file}: dataset.normalize is none: X used as it is ({self.scale.describe()})"
        if self.action == "normalize":
            return (f"{file}: {self.source} holds raw counts ({self.scale.describe()}): normalised each row to "
                    f"{TARGET_SUM:g} in total and log1p-transformed, as scanpy's normalize_total + log1p "
                    "(dataset.normalize: auto; none keeps X as it is)")
        what = "changes from control" if self.scale.kind == "relative" else "log-normalised"
        return f"{file}: X looks {what} ({self.scale.describe()}): used as it is"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "action": self.action, "mode": self.mode, **asdict(self.scale)}


def sample_rows(x: Any, *, max_rows: int = SAMPLE_ROWS) -> np.ndarray:
    """Stored values of up to ``max_rows`` evenly spaced rows of ``x`` as a flat array.

    ``x`` may be a numpy array, a scipy sparse matrix, or a backed matrix of anndata (h5py
    dataset, backed sparse dataset): only the sampled rows are read. The zeros a sparse
    matrix leaves out count as one value 0.
    """
    n_rows = int(x.shape[0])
    if n_rows == 0:
        return np.zeros(0, dtype=np.float64)
    rows = np.unique(np.linspace(0, n_rows - 1, num=min(n_rows, max_rows)).round().astype(np.int64))
    part = x[rows] if len(rows) < n_rows else x[:]
    if sp.issparse(part):
        part = part.tocsr()
        stored = np.asarray(part.data).ravel()
        if part.nnz < part.shape[0] * part.shape[1]:
            stored = np.append(stored, 0.0)  # the zeros the matrix leaves out
        return stored
    return np.asarray(part).ravel()


def classify(values: np.ndarray, *, rows: int, relative: bool) -> XScale:
    """The scale of sampled values (no judgement: see :func:`plan_normalization`)."""
    if values.size == 0:
        return XScale("empty", rows, 0.0, 0.0, True)
    lo, hi = float(values.min()), float(values.max())
    integer = bool(np.all(values == np.round(values)))
    if relative:
        kind = "relative"
    elif lo >= 0 and integer:
        kind = "counts"
    else:
        kind = "log"
    return XScale(kind, rows, lo, hi, integer)


def _scale_of(x: Any, *, relative: bool, source: str, what: str) -> XScale:
    values = sample_rows(x)
    finite = np.isfinite(values)
    if not finite.all():
        raise DatasetError(f"{source}: {what} holds NaN or infinite values ({int((~finite).sum())} entries "
                           "in the sampled rows)")
    return classify(values, rows=min(int(x.shape[0]), SAMPLE_ROWS), relative=relative)


def _problem(scale: XScale, *, relative: bool) -> str | None:
    """Why a scale is neither raw counts nor log-like (None when it is one of them)."""
    if scale.kind == "counts" or scale.kind == "empty":
        return None
    if scale.min < 0 and not relative:
        return (f"negative values (min {scale.min:.4g}) while dataset.relative is false: scaled or z-scored X "
                "is not supported")
    peak = max(abs(scale.min), abs(scale.max))
    if peak > LOG_SCALE_MAX:
        return (f"values up to {peak:.4g}, far above any log scale (log1p of counts per 1e4 reaches about 9), "
                "and not whole numbers: normalised but not log-transformed?")
    return None


def plan_normalization(adata: ad.AnnData, *, options: DatasetOptions, source: str = "dataset") -> Plan:
    """Decide from a row sample what :func:`normalize_dataset` will do; raise :class:`DatasetError`
    when ``X`` is neither raw counts nor log-like (and no ``counts`` layer holds counts).

    Works on backed AnnData (``anndata.read_h5ad(path, backed='r')``): only the sample is read.
    """
    scale = _scale_of(adata.X, relative=options.relative, source=source, what="X")
    if options.normalize == "none":
        return Plan("X", scale, "none", "none")
    problem = _problem(scale, relative=options.relative)
    if problem is None:
        return Plan("X", scale, "normalize" if scale.kind == "counts" else "none", options.normalize)
    layers = adata.layers if adata.layers is not None else {}
    if not options.relative and COUNTS_LAYER in layers:
        layer_scale = _scale_of(layers[COUNTS_LAYER], relative=False, source=source, what="layers['counts']")
        if layer_scale.kind == "counts":
            return Plan(f"layers[{COUNTS_LAYER!r}]", layer_scale, "normalize", options.normalize)
    raise DatasetError(
        f"{source}: X is neither raw counts nor log-like: {problem} ({scale.describe()}). Give raw counts "
        "(non-negative whole numbers, or a 'counts' layer; normalised with dataset.normalize: auto) or "
        "log-normalised X (e.g. log1p of counts per 1e4), or set dataset.normalize: none to use X as it is"
    )


def normalize_counts(x: Any, *, target_sum: float = TARGET_SUM) -> np.ndarray | sp.csr_matrix:
    """Scale each row of ``x`` to ``target_sum`` in total, then ``log1p`` (float32).

    scanpy's ``normalize_total(target_sum=1e4)`` + ``log1p``: a row with no counts stays
    zero. A sparse ``x`` gives a CSR matrix with the same stored entries (never densified).
    """
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float32, copy=True)
        totals = np.asarray(out.sum(axis=1), dtype=np.float64).ravel()
        factor = np.divide(target_sum, totals, out=np.ones_like(totals), where=totals > 0)
        out.data *= np.repeat(factor, np.diff(out.indptr)).astype(np.float32)
        np.log1p(out.data, out=out.data)
        return out
    out = np.array(x, dtype=np.float32, copy=True)
    totals = out.sum(axis=1, dtype=np.float64)
    factor = np.divide(target_sum, totals, out=np.ones_like(totals), where=totals > 0)
    out *= factor[:, None].astype(np.float32)
    np.log1p(out, out=out)
    return out


def normalize_dataset(adata: ad.AnnData, *, options: DatasetOptions, source: str = "dataset") -> Plan:
    """Apply ``dataset.normalize`` to an in-memory AnnData in place and log what was seen and done.

    Idempotent: the plan is recorded in ``adata.uns['grape_normalize']`` and a second call
    returns it without touching ``X``.
    """
    done = adata.uns.get(UNS_KEY) if adata.uns is not None else None
    if isinstance(done, dict) and "action" in done:
        fields = {k: done[k] for k in ("kind", "rows_sampled", "min", "max", "integer")}
        return Plan(str(done["source"]), XScale(**fields), str(done["action"]), str(done["mode"]))
    plan = plan_normalization(adata, options=options, source=source)
    if plan.action == "normalize":
        matrix = adata.X if plan.source == "X" else adata.layers[COUNTS_LAYER]
        adata.X = normalize_counts(matrix)
    log.info("%s", plan.message(source))
    adata.uns[UNS_KEY] = plan.as_dict()
    return plan
