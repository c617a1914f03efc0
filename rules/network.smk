rule network:
    input:
        graph=expand(rules.graph.output[0], graph_variant="full"),
        networks=expand(rules.train.output.network, variant=VARIANTS),
        truth=DEMO_FILES["truth_network"],
    output:
        report(
            f"{RESULTS}/network/recovery.tsv",
            caption="../workflow/report/network.rst",
            category="Network",
        ),
    params:
        options=opts("network"),
        code=code_hash("network"),
        grape=GRAPE,
    log:
        f"{LOGS}/network.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} network --graph {input.graph} --networks {input.networks} --truth {input.truth}"
        " --out {output} {params.options} > {log} 2>&1"
