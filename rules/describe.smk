rule describe:
    input:
        unpack(description_inputs),
        genes=rules.annotate.output.genes,
        missing=rules.annotate.output.missing,
        code=code("describe", "ncbi", "download"),
    output:
        f"{RESULTS}/describe/descriptions.tsv",
    params:
        sources=description_args,
        options=opts("describe", "download"),
    log:
        f"{LOGS}/describe.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "python -m grape describe --genes {input.genes} --missing {input.missing} {params.sources}"
        " --out {output} {params.options} > {log} 2>&1"
