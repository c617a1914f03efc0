rule graph:
    input:
        descriptions=rules.describe.output[0],
        text=rules.embed.output.text,
        dna=rules.embed.output.dna,
        priors=prior_files,
    output:
        f"{RESULTS}/graph/{{graph_variant}}/graph.safetensors",
    params:
        options=opts("graph"),
        code=code_hash("graph"),
        grape=GRAPE,
    log:
        f"{LOGS}/graph_{{graph_variant}}.log",
    wildcard_constraints:
        graph_variant="|".join(graph_variant_names()),
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} graph --descriptions {input.descriptions} --text {input.text} --dna {input.dna}"
        " --variant {wildcards.graph_variant} --out {output} {params.options} > {log} 2>&1"
