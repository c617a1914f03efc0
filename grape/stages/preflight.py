"""The preflight stage: check the dataset, the split table and the configuration, write the report as JSON.

The checks are :func:`grape.data.preflight.inspect`; this command reads the configuration
(``--config``, ``-`` for stdin), logs the report and writes it atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from grape.data.preflight import Options, inspect, log_report, read_config
from grape.io.files import write_text_atomic
from grape.stages import PathArg

FILES = {
    "dataset": PathArg("the run's h5ad (GEARS contract)"),
    "table": PathArg("split table given by the user (split.kind table): condition, split[, subgroup]",
                     required=False),
    "config": PathArg("the whole configuration as JSON or YAML ('-': JSON on stdin), validated against the schema"),
    "out": PathArg("output JSON: what the dataset holds and what the run will do with it"),
}

__all__ = ["FILES", "Options", "run"]


def run(*, options: Options, dataset: Path, config: Path, out: Path, table: Path | None = None) -> None:
    """Check the run's inputs; write the report as JSON."""
    del options  # no options of its own: everything comes from --config
    report = inspect(dataset, config=read_config(config), table=table)
    log_report(report)
    write_text_atomic(out, json.dumps(report, indent=2, sort_keys=True, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
