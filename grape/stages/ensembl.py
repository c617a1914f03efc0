"""The ensembl stage: download an Ensembl release's GTF / cDNA / ncRNA FASTA where pyensembl keeps them.

File names come from :func:`grape.annotation.ensembl.release_files`; the downloads (retried,
resumed, checked, atomic) from :func:`grape.annotation.ensembl.download_release`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from grape.annotation.ensembl import Options, download_release, release_files, select_release_file
from grape.stages import PathArg

log = logging.getLogger(__name__)

FILES: dict[str, PathArg] = {
    "root": PathArg("cache root; files go to <root>/pyensembl/<assembly>/ensembl<release>/ (pyensembl's layout)"),
    "file": PathArg("download only this file of the release (its path under --root); all three when omitted",
                    required=False),
}

__all__ = ["FILES", "Options", "run"]


def run(*, options: Options, root: Path, file: Path | None = None, session: Any | None = None) -> None:
    """Download the GTF, cDNA and ncRNA FASTA of the configured release (or only ``file``) under ``root``."""
    files = release_files(species=options.species, release=options.release, server=options.ensembl_url, root=root)
    if file is not None:
        files = select_release_file(files, file, species=options.species, release=options.release)
    for item in files.values():
        log.info("%s: %s -> %s", item.kind, item.url, item.path)
    download_release(files, policy=options.retry_policy(), session=session)
