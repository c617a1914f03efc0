rule split:
    input:
        dataset=dataset_path(),
        table=split_table(),
        preflight=rules.preflight.output[0],
    output:
        f"{RESULTS}/split/split.tsv",
    params:
        options=opts("split"),
        table=split_table_flag,
        code=code_hash("split"),
        grape=GRAPE,
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} split --dataset {input.dataset} {params.table} --out {output} {params.options} > {log} 2>&1"


# One split per value of split.seeds (the split seed, or the fold for kind logo): results/<run>/splits/seed<k>/.
use rule split as split_seeds with:
    output:
        f"{SEED_RESULTS}/split/split.tsv",
    params:
        options=split_seed_options,
    log:
        f"{SEED_LOGS}/split.log",
    wildcard_constraints:
        seed=r"\d+",
