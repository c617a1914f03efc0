"""The simulate stage: simulate the demo organism and its Perturb-seq experiment, write them into a directory.

The simulation is :func:`grape.demo.simulate.simulate` (in memory); this command writes every
file of :data:`grape.demo.simulate.OUTPUT_FILES`, each atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from grape.demo import simulate as sim
from grape.demo.simulate import Demo, Options
from grape.io.files import atomic_path, write_text_atomic
from grape.stages import PathArg

log = logging.getLogger(__name__)

FILES: dict[str, PathArg] = {"out_dir": PathArg("directory for the demo organism and experiment")}

__all__ = ["FILES", "Options", "run", "write_demo"]


def _tsv(frame: pd.DataFrame) -> str:
    """``frame`` as tab-separated text with a header, no index."""
    return frame.to_csv(sep="\t", index=False, lineterminator="\n")


def write_demo(demo: Demo, *, out_dir: Path) -> None:
    """Write every file of :data:`grape.demo.simulate.OUTPUT_FILES` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / sim.GTF_FILE, demo.gtf)
    write_text_atomic(out_dir / sim.CDNA_FILE, demo.cdna_fasta)
    write_text_atomic(out_dir / sim.NCRNA_FILE, demo.ncrna_fasta)
    write_text_atomic(out_dir / sim.DESCRIPTIONS_FILE, _tsv(demo.descriptions))
    genes_table = demo.truth_genes[
        ["gene_id", "gene_name", "biotype", "module", "motif_copies", "is_regulator", "knockdown"]
    ]
    write_text_atomic(out_dir / sim.TRUTH_GENES_FILE, _tsv(genes_table))
    write_text_atomic(out_dir / sim.TRUTH_NETWORK_FILE, _tsv(demo.truth_network))
    write_text_atomic(out_dir / sim.TRUTH_CONDITIONS_FILE, _tsv(demo.truth_conditions))
    write_text_atomic(out_dir / sim.TRUTH_MODULES_FILE, _tsv(demo.truth_modules))
    with atomic_path(out_dir / sim.H5AD_FILE) as tmp:
        demo.adata.write_h5ad(tmp, compression="gzip")
    write_text_atomic(out_dir / sim.SETTINGS_FILE, json.dumps(asdict(demo.options), indent=2, sort_keys=True) + "\n")
    log.info(
        "demo written to %s: %d genes, %d conditions, %d cells",
        out_dir,
        len(demo.genes),
        len(demo.truth_conditions),
        demo.adata.n_obs,
    )


def run(*, options: Options, out_dir: Path) -> None:
    """Simulate the demo from ``options`` and write it into ``out_dir``."""
    write_demo(sim.simulate(options), out_dir=Path(out_dir))
