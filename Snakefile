# GRAPE: perturbation-response prediction with a biotype heterograph and a GNN.
# This file is the table of contents; the rules live in rules/, the logic in grape/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/dataset.smk"
include: "rules/preflight.smk"
include: "rules/annotate.smk"
include: "rules/describe.smk"
include: "rules/embed.smk"
include: "rules/graph.smk"
include: "rules/split.smk"
include: "rules/train.smk"
include: "rules/network.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{RESULTS}/report/summary.md",
        f"{RESULTS}/evaluate/metrics.tsv",
        network_targets(),
        aggregate_targets(),
    default_target: True
