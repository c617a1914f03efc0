rule describe:
    input:
        genes=rules.annotate.output.genes,
        missing=rules.annotate.output.missing,
        table=description_table(),
        code=code("describe"),
    output:
        f"{RESULTS}/describe/descriptions.tsv",
    params:
        options=opts("describe"),
    log:
        f"{LOGS}/describe.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "python -m grape describe --genes {input.genes} --missing {input.missing} --table {input.table}"
        " --out {output} {params.options} > {log} 2>&1"
