# Checks the dataset, the split table and the configuration in seconds, before any
# expensive job: annotate and split, and so every later stage, depend on its report. Its
# params are only the keys it checks (preflight_config_json), so other changes rerun no check.


rule preflight:
    input:
        dataset=dataset_path(),
        table=split_table(),
    output:
        f"{RESULTS}/preflight/preflight.json",
    params:
        run_config=preflight_config_json,
        table=split_table_flag,
        code=code_hash("preflight"),
        grape=GRAPE,
    log:
        f"{LOGS}/preflight.log",
    resources:
        # a configured CUDA device is checked where it will be used: on a GPU node of a cluster
        gpu=1 if config["train"]["device"].startswith("cuda") or config["embed"]["device"].startswith("cuda") else 0,
    conda:
        "../envs/grape.yaml"
    shell:
        "printf '%s' {params.run_config:q} | {params.grape} preflight --dataset {input.dataset} {params.table}"
        " --config - --out {output} > {log} 2>&1"
