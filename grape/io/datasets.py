"""Datasets: download a perturbation dataset, extract its h5ad safely, subset it by obs values.

The workflow's dataset rules (``rules/dataset.smk``) run three commands:

``python -m grape dataset download --name N --url URL [--sha256 H] [--md5 H] --out resources/datasets/N/archive``
    Fetches a GEARS-style archive (a zip or tar holding ``<dataset>/perturb_processed.h5ad``,
    as GEARS' Harvard Dataverse files) or a bare h5ad with :func:`grape.io.download.fetch`:
    retries with backoff, resumed with HTTP ``Range``, HTML pages and truncated bodies
    rejected. The finished file must then *be* what it claims: its leading bytes name
    its format (zip, tar, gzip / bzip2 / xz tar, or HDF5), compressed streams are read
    to the end (CRC), the archive holds exactly one member called ``--member``, a bare
    h5ad opens with h5py. Only then is it checked against the pinned ``sha256`` /
    ``md5`` and renamed onto ``--out``; a mismatch deletes it (no retry: the same bytes
    would come again). The computed digests are written beside it (``archive.sha256``,
    ``archive.md5``, in ``sha256sum -c`` form) so an unpinned download can be pinned.
    Every error names the dataset and the URL.
``python -m grape dataset extract --name N --archive A --member perturb_processed.h5ad --out O``
    Streams that one member out of the archive (never ``extractall``): its path must be
    relative without ``..``, and it must be a regular file (no link, no device); its
    size and CRC are checked, the result must be HDF5 and open as an AnnData.
``python -m grape dataset subset --dataset D --subset '{"dataset": "norman19"}' --out O [dataset options]``
    Keeps the cells whose obs columns hold the given values and checks the dataset
    contract (:func:`grape.data.dataset.check_dataset`) on the result.

Nothing is ever unpickled. GEARS' own loader once stored Dataverse's HTML "403
Forbidden" page under the dataset's name and handed it to ``pickle``; here a page,
a pickle or any unknown format is refused by its leading bytes before anything
reads it, and h5ad files are read by h5py / anndata, which do not unpickle.
Each command writes its outputs atomically (temporary file, then rename).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from grape.io.files import atomic_path, sha256_file, write_text_atomic
from grape.data.dataset import DatasetError, DatasetOptions, check_dataset
from grape.io.download import DownloadError, DownloadOptions, RetryPolicy, fetch, looks_like_html, redact_url
from grape.options import option_field, options_class

log = logging.getLogger(__name__)

DEFAULT_MEMBER = "perturb_processed.h5ad"
"""The h5ad inside GEARS' dataset archives (``norman/perturb_processed.h5ad``)."""

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHUNK = 1 << 20

# Leading bytes of each format we accept, and of those we name when refusing.
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED = {b"\x1f\x8b": ("gzip", gzip.open), b"BZh": ("bzip2", bz2.open), b"\xfd7zXZ\x00": ("xz", lzma.open)}


class DatasetDownloadError(DatasetError):
    """A dataset could not be downloaded (or was rejected); the message names the dataset and URL."""

    def __init__(self, message: str, *, name: str, url: str) -> None:
        super().__init__(message)
        self.name = name
        self.url = url


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Digests:
    """Checksums of a file."""

    sha256: str
    md5: str


def file_digests(path: str | os.PathLike[str]) -> Digests:
    """sha256 and md5 of a file in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return Digests(sha.hexdigest(), md5.hexdigest())


def sniff(path: str | os.PathLike[str]) -> str:
    """The format of a downloaded file from its leading bytes: ``zip``, ``tar`` or ``h5ad``.

    Raises :class:`DatasetError` naming what the file looks like instead (an HTML page,
    a Python pickle, empty, unknown bytes). Nothing is parsed beyond the first 512 bytes.
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        raise DatasetError(f"{Path(path).name} is empty")
    if head.startswith(_ZIP):
        return "zip"
    if head.startswith(HDF5_SIGNATURE):
        return "h5ad"
    if any(head.startswith(magic) for magic in _COMPRESSED) or head[257:262] == b"ustar":
        return "tar"
    if looks_like_html(head) or head.lstrip().lower().startswith(b"<?xml"):
        raise DatasetError(f"{Path(path).name} is an HTML/XML page, not a dataset archive (an error page?)")
    if head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}:
        raise DatasetError(f"{Path(path).name} is a Python pickle; pickles are never loaded (they can run code)")
    raise DatasetError(
        f"{Path(path).name} is not a zip, tar or h5ad file (it starts with {head[:16]!r})"
    )


def unsafe_member(name: str) -> str | None:
    """Why an archive member path is unsafe to use (absolute, ``..``, drive letter), or None."""
    if not name or "\x00" in name:
        return "empty or NUL in the name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "path with '..'"
    return None


def _matches(name: str, member: str) -> bool:
    norm = name.replace("\\", "/").rstrip("/")
    return norm == member.strip("/") or PurePosixPath(norm).name == member


@dataclass(frozen=True)
class Member:
    """The one archive member to extract."""

    name: str
    size: int


def _zip_member(archive: zipfile.ZipFile, member: str, where: str) -> tuple[zipfile.ZipInfo, Member]:
    found = [i for i in archive.infolist() if not i.is_dir() and _matches(i.filename, member)]
    return _one(found, member, where, [i.filename for i in archive.infolist()],
                kind=lambda i: "a symbolic link" if stat.S_ISLNK(i.external_attr >> 16) else None,
                name=lambda i: i.filename, size=lambda i: i.file_size)


def _tar_member(archive: tarfile.TarFile, member: str, where: str) -> tuple[tarfile.TarInfo, Member]:
    infos = archive.getmembers()  # reads every header: a truncated tar fails here
    found = [i for i in infos if not i.isdir() and _matches(i.name, member)]
    return _one(found, member, where, [i.name for i in infos],
                kind=lambda i: None if i.isreg() else "a link or special file",
                name=lambda i: i.name, size=lambda i: i.size)


def _one(found: list, member: str, where: str, names: list[str], *, kind: Callable, name: Callable,
         size: Callable) -> tuple[Any, Member]:
    if not found:
        shown = ", ".join(n for n in names if n.endswith((".h5ad", ".h5"))) or ", ".join(names[:10]) or "nothing"
        raise DatasetError(f"{where} holds no member {member!r} (it holds {shown}); set dataset.member")
    if len(found) > 1:
        raise DatasetError(
            f"{where} holds {len(found)} members named {member!r} ({', '.join(name(i) for i in found)}); "
            "set dataset.member to the full path of one"
        )
    info = found[0]
    reason = unsafe_member(name(info)) or kind(info)
    if reason:
        raise DatasetError(f"{where}: member {name(info)!r} is refused ({reason})")
    return info, Member(name(info), size(info))


def _drain_compressed(path: Path, opener: Callable[..., IO[bytes]], what: str) -> None:
    """Read a compressed stream to its end: a truncated or corrupt one fails (length and CRC)."""
    try:
        with opener(path, "rb") as handle:
            while handle.read(CHUNK):
                pass
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise DatasetError(f"{path.name}: the {what} stream is truncated or corrupt ({error})") from None


def check_archive(path: str | os.PathLike[str], *, member: str = DEFAULT_MEMBER) -> tuple[str, Member | None]:
    """Check a downloaded file is a complete archive holding ``member`` (or a complete h5ad).

    Returns the format and the member (None for a bare h5ad). Raises
    :class:`DatasetError` (a ``ValueError``) for HTML, pickles, unknown formats,
    truncated or corrupt archives, and a missing, repeated or unsafe member.
    """
    path = Path(path)
    kind = sniff(path)
    where = f"archive {path.name}"
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:  # a truncated zip has no central directory
                _, found = _zip_member(archive, member, where)
        except zipfile.BadZipFile as error:
            raise DatasetError(f"{path.name}: truncated or corrupt zip archive ({error})") from None
        return kind, found
    if kind == "tar":
        with open(path, "rb") as handle:
            head = handle.read(6)
        for magic, (what, opener) in _COMPRESSED.items():
            if head.startswith(magic):
                _drain_compressed(path, opener, what)
        try:
            with tarfile.open(path, "r:*") as archive:
                _, found = _tar_member(archive, member, where)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise DatasetError(f"{path.name}: truncated or corrupt tar archive ({error})") from None
        return kind, found
    check_h5ad(path)
    return kind, None


def check_h5ad(path: str | os.PathLike[str], *, label: str | None = None) -> None:
    """The file is a complete HDF5 file with AnnData's ``obs`` and ``var`` groups.

    ``label`` names the file in messages (default: its name).
    """
    import h5py

    path = Path(path)
    label = label or path.name
    with open(path, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            raise DatasetError(f"{label} is not an HDF5 (h5ad) file")
    try:
        with h5py.File(path, "r") as handle:  # HDF5 checks the stored end of file: truncation fails here
            missing = [key for key in ("obs", "var") if key not in handle]
    except OSError as error:
        raise DatasetError(f"{label}: truncated or corrupt HDF5 file ({error})") from None
    if missing:
        raise DatasetError(f"{label} is HDF5 but not an AnnData h5ad (no {', '.join(missing)})")


# --------------------------------------------------------------------------- download


def checksum_sidecars(dest: str | os.PathLike[str]) -> dict[str, Path]:
    """Where the computed checksums of a download are recorded: ``<dest>.sha256`` and ``<dest>.md5``."""
    dest = Path(dest)
    return {algo: dest.with_name(f"{dest.name}.{algo}") for algo in ("sha256", "md5")}


def staging_path(dest: str | os.PathLike[str]) -> Path:
    """Where a download waits for its checksum check (``fetch`` resumes ``<staging>.part``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".unverified")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    name: str,
    sha256: str | None = None,
    md5: str | None = None,
    member: str = DEFAULT_MEMBER,
    policy: RetryPolicy = RetryPolicy(),
    session: Any | None = None,
) -> Digests:
    """Download dataset ``name`` from ``url`` to ``dest``, checked, pinned and atomic.

    The body goes to ``<dest>.unverified.part`` (resumed by a rerun), is checked by
    :func:`check_archive` (a failure deletes it and retries), then compared with the
    pins; only a file that passes everything is renamed onto ``dest``, beside its
    checksum sidecars. Raises :class:`DatasetDownloadError` naming the dataset and
    the URL; ``dest`` is then absent.
    """
    dest = Path(dest)
    shown = redact_url(url)
    staging = staging_path(dest)
    computed: dict[str, Digests] = {}

    def validate(path: Path) -> None:
        check_archive(path, member=member)
        computed["digests"] = file_digests(path)

    # A run stopped in the instant between fetch's rename and ours leaves a staged file whose
    # URL is not recorded: fetch again rather than trust it (a partial .part is still resumed).
    staging.unlink(missing_ok=True)
    log.info("dataset %s: downloading %s", name, shown)
    try:
        fetch(url, staging, validate=validate, policy=policy, session=session)
    except DownloadError as error:
        raise DatasetDownloadError(f"dataset {name!r}: {error}", name=name, url=shown) from None
    digests = computed["digests"]
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        got = getattr(digests, algo)
        if expected is not None and got != expected.lower():
            staging.unlink(missing_ok=True)
            raise DatasetDownloadError(
                f"dataset {name!r}: the file downloaded from {shown} has {algo} {got} but dataset.{algo} is "
                f"{expected.lower()}; it was deleted. If the source changed on purpose, pin the new checksum.",
                name=name, url=shown,
            )
    sidecars = checksum_sidecars(dest)
    for algo, path in sidecars.items():
        write_text_atomic(path, f"{getattr(digests, algo)}  {dest.name}\n")
    os.replace(staging, dest)
    if sha256 is None and md5 is None:
        log.warning(
            "dataset %s: no checksum pinned; the download from %s has sha256 %s and md5 %s (recorded in %s): "
            "pin one with dataset.sha256 or dataset.md5", name, shown, digests.sha256, digests.md5,
            sidecars["sha256"],
        )
    else:
        log.info("dataset %s: checksum verified (sha256 %s)", name, digests.sha256)
    return digests


# --------------------------------------------------------------------------- extract


def _copy(source: IO[bytes], target: Path, *, expected: int, where: str) -> None:
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > expected:
                raise DatasetError(f"{where}: member is larger than its declared {expected} bytes")
            out.write(chunk)
    if written != expected:
        raise DatasetError(f"{where}: member has {written} bytes, {expected} declared (truncated)")


def extract(
    archive: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str, member: str = DEFAULT_MEMBER
) -> Member | None:
    """Write the h5ad ``member`` of ``archive`` (or the archive itself when it is an h5ad) to ``out``.

    Only that member is read, streamed to a temporary file beside ``out`` and renamed
    when it is complete (declared size, CRC) and opens as an AnnData. Raises
    :class:`DatasetError` naming the dataset and the archive.
    """
    archive, out = Path(archive), Path(out)
    where = f"dataset {name!r}, archive {archive}"
    if not archive.is_file():
        raise DatasetError(f"{where}: file not found")
    try:
        kind = sniff(archive)
        with atomic_path(out) as tmp:
            found: Member | None = None
            if kind == "h5ad":
                shutil.copyfile(archive, tmp)
            elif kind == "zip":
                with zipfile.ZipFile(archive) as handle:
                    info, found = _zip_member(handle, member, where)
                    with handle.open(info) as source:  # zipfile checks the CRC at the end
                        _copy(source, tmp, expected=found.size, where=f"{where}, member {found.name}")
            else:
                with tarfile.open(archive, "r:*") as handle:
                    info, found = _tar_member(handle, member, where)
                    source = handle.extractfile(info)
                    if source is None:
                        raise DatasetError(f"{where}: member {found.name!r} is not a regular file")
                    with source:
                        _copy(source, tmp, expected=found.size, where=f"{where}, member {found.name}")
            check_h5ad(tmp, label=f"member {found.name}" if found else archive.name)
            shape = _h5ad_shape(tmp)
    except DatasetError as error:
        message = str(error)
        raise DatasetError(message if message.startswith(where) else f"{where}: {message}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise DatasetError(f"{where}: truncated or corrupt archive ({type(error).__name__}: {error})") from None
    log.info("dataset %s: extracted %s (%d cells x %d genes) to %s", name,
             found.name if found else archive.name, *shape, out)
    return found


def _h5ad_shape(path: Path) -> tuple[int, int]:
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r")
    try:
        return adata.n_obs, adata.n_vars
    finally:
        adata.file.close()


# --------------------------------------------------------------------------- subset


def _values(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in items]


def subset_mask(obs: Any, subset: Mapping[str, Any], *, source: str = "dataset") -> Any:
    """Boolean mask of the cells whose obs columns hold the values of ``subset`` (all columns must match).

    Raises :class:`DatasetError` naming the column or value that does not exist, or an
    empty result.
    """
    import numpy as np

    mask = np.ones(len(obs), dtype=bool)
    for column, value in subset.items():
        if column not in obs.columns:
            raise DatasetError(
                f"{source}: dataset.subset names obs column {column!r}, which is absent "
                f"(columns: {', '.join(map(str, obs.columns))})"
            )
        wanted = _values(value)
        present = obs[column].astype(str)
        available = set(present.unique())
        absent = [v for v in wanted if v not in available]
        if absent:
            shown = ", ".join(sorted(available)[:20]) + (" ..." if len(available) > 20 else "")
            raise DatasetError(
                f"{source}: dataset.subset {column}: no cell has {', '.join(map(repr, absent))} "
                f"(values: {shown})"
            )
        mask &= present.isin(wanted).to_numpy()
    if not mask.any():
        raise DatasetError(f"{source}: dataset.subset {dict(subset)} keeps no cell")
    return mask


def subset_dataset(adata: Any, subset: Mapping[str, Any], *, source: str = "dataset") -> Any:
    """The cells of ``adata`` selected by ``subset`` (a copy, unused categories dropped)."""
    import pandas as pd

    kept = adata[subset_mask(adata.obs, subset, source=source)].copy()
    for column in kept.obs.columns:
        if isinstance(kept.obs[column].dtype, pd.CategoricalDtype):
            kept.obs[column] = kept.obs[column].cat.remove_unused_categories()
    return kept


# Bases listed last section first: a dataclass's fields follow the reversed MRO (dataset, then subset).
@dataclass(frozen=True)
class SubsetOptions(options_class("dataset", keys=("subset",)), DatasetOptions):
    """Options of ``grape dataset subset``: the ``dataset`` section, with its workflow key ``subset``
    (the rule passes it as ``--subset``)."""


def checked_subset(adata: Any, *, options: SubsetOptions, source: str) -> Any:
    """The cells of ``adata`` selected by ``options.subset`` (all when empty), checked against the dataset contract.

    Raises :class:`DatasetError` naming ``source``, the column or value.
    """
    n_before = adata.n_obs
    adata = subset_dataset(adata, options.subset, source=source) if options.subset else adata
    check_dataset(adata, options=options, source=f"{source} subset {json.dumps(options.subset)}")
    conditions = adata.obs[options.condition_key].astype(str)
    log.info("%s: kept %d of %d cells (%d conditions) with %s", source, adata.n_obs, n_before,
             conditions.nunique(), json.dumps(options.subset))
    return adata


def subset_provenance(source: str | os.PathLike[str], adata: Any, *, options: SubsetOptions, cells_in: int) -> dict[str, Any]:
    """The JSON record of a subset: its source file (and sha256), the subset, and what it kept."""
    return {
        "source": str(source), "source_sha256": sha256_file(source), "subset": options.subset,
        "cells_in": int(cells_in), "cells": adata.n_obs, "genes": adata.n_vars,
        "conditions": int(adata.obs[options.condition_key].astype(str).nunique()),
    }


def archive_provenance(archive: str | os.PathLike[str], found: Member | None, *, name: str) -> dict[str, Any]:
    """The JSON record of an extracted h5ad: the dataset, its archive (and sha256, from the sidecar when there), the member."""
    archive = Path(archive)
    sidecar = checksum_sidecars(archive)["sha256"]
    digest = sidecar.read_text().split()[0] if sidecar.is_file() else sha256_file(archive)
    return {"dataset": name, "archive": str(archive), "archive_sha256": digest,
            "member": found.name if found else None}


@dataclass(frozen=True, kw_only=True)
class FetchOptions(DownloadOptions):
    """Options of ``grape dataset download``: ``dataset.name/url/sha256/md5/member`` and the ``download`` section."""

    name: str = field(metadata={"help": "dataset name (dataset.name)"})
    url: str = field(metadata={"help": "URL of the archive or h5ad (dataset.url)"})
    sha256: str | None = option_field("dataset", "sha256")
    md5: str | None = option_field("dataset", "md5")
    member: str = option_field("dataset", "member")


@dataclass(frozen=True)
class ExtractOptions:
    """Options of ``grape dataset extract``: ``dataset.name`` and ``dataset.member``."""

    name: str = field(metadata={"help": "dataset name (dataset.name)"})
    member: str = option_field("dataset", "member")
