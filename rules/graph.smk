rule graph:
    input:
        descriptions=rules.describe.output[0],
        text=rules.embed.output.text,
        dna=rules.embed.output.dna,
        code=code("graph", "embed"),
    output:
        f"{RESULTS}/graph/graph.safetensors",
    params:
        options=opts("graph"),
    log:
        f"{LOGS}/graph.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape graph --descriptions {input.descriptions} --text {input.text} --dna {input.dna}"
        " --out {output} {params.options} > {log} 2>&1"
