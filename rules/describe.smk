rule describe:
    input:
        unpack(description_inputs),
        genes=rules.annotate.output.genes,
        missing=rules.annotate.output.missing,
    output:
        f"{RESULTS}/describe/descriptions.tsv",
    params:
        sources=description_args,
        options=opts("describe"),
        code=code_hash("describe"),
        grape=GRAPE,
    log:
        f"{LOGS}/describe.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} describe --genes {input.genes} --missing {input.missing} {params.sources}"
        " --out {output} {params.options} > {log} 2>&1"
