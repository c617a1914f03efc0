rule split:
    input:
        dataset=dataset_path(),
        table=split_table(),
        preflight=rules.preflight.output[0],
        code=code("split", "data", "identity"),
    output:
        f"{RESULTS}/split/split.tsv",
    params:
        options=opts("dataset", "split"),
        table=split_table_flag,
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "python -m grape split --dataset {input.dataset} {params.table} --out {output} {params.options} > {log} 2>&1"
