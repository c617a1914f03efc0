rule split:
    input:
        dataset=dataset_path(),
        code=code("split", "data"),
    output:
        f"{RESULTS}/split/split.tsv",
    params:
        options=opts("dataset", "split"),
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "python -m grape split --dataset {input.dataset} --out {output} {params.options} > {log} 2>&1"
