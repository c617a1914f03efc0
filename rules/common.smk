# Configuration checks and the helpers that compute rule inputs and command-line options.

import json
import os
import shlex
import sys
from pathlib import Path

# Jobs run `python -m grape`; make the package importable from wherever Snakemake runs
# (--directory, a SLURM node, a conda env) without requiring an install.
sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from grape.config import validate_config

# Validated before any job is scheduled: defaults filled in, unknown keys and wrong types
# refused with one message naming the key (snakemake.utils.validate prints the schema too).
validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/{RUN}"
DEMO = "resources/demo"
DEMO_FILES = {
    "gtf": f"{DEMO}/genome.gtf",
    "cdna": f"{DEMO}/cdna.fa",
    "ncrna": f"{DEMO}/ncrna.fa",
    "descriptions": f"{DEMO}/descriptions.tsv",
    "h5ad": f"{DEMO}/perturb.h5ad",
    "truth_genes": f"{DEMO}/truth_genes.tsv",
    "truth_network": f"{DEMO}/truth_network.tsv",
    "truth_conditions": f"{DEMO}/truth_conditions.tsv",
    "truth_modules": f"{DEMO}/truth_modules.tsv",
}

# Config keys that choose the workflow's inputs rather than a stage's options.
WORKFLOW_KEYS = {"source", "path", "gtf", "cdna", "ncrna", "table"}

# Model variants trained on the same split and scored side by side: the full model, plus
# the ablations listed in config (each one a set of train options, see grape.train).
VARIANTS = ["full"]


def is_demo():
    return config["dataset"]["source"] == "demo"


def dataset_path():
    """The single-cell h5ad the run uses."""
    return DEMO_FILES["h5ad"] if is_demo() else config["dataset"]["path"]


def annotation_file(kind):
    """GTF, cDNA or ncRNA FASTA of the annotation."""
    return DEMO_FILES[kind] if config["annotate"]["source"] == "demo" else config["annotate"][kind]


def description_table():
    """The table of gene descriptions."""
    table = config["describe"]["table"]
    return DEMO_FILES["descriptions"] if table is None else table


def code(*modules):
    """Source files of the grape modules a stage runs: editing one reruns the stage."""
    return [str(Path(workflow.basedir) / "grape" / f"{m}.py") for m in ("__init__", "cli", "_io", *modules)]


def opts(*sections):
    """Command-line flags of a stage from config sections (workflow keys left out)."""
    flags = []
    for section in sections:
        for key, value in config[section].items():
            if key in WORKFLOW_KEYS or value is None:
                continue
            flag = f"--{key.replace('_', '-')}"
            if isinstance(value, bool):
                flags.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, dict):
                flags.extend([flag, json.dumps(value, sort_keys=True)])
            elif isinstance(value, list):
                flags.extend([flag, *map(str, value)])
            else:
                flags.extend([flag, str(value)])
    return " ".join(shlex.quote(f) for f in flags)


def train_options(wildcards):
    """Train flags of one model variant."""
    return opts("dataset", "train")


def out_dir(wildcards, output):
    """Directory of a rule's first output (for stages that write several files)."""
    return str(Path(output[0]).parent)
