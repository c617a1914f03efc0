rule network:
    input:
        graph=rules.graph.output[0],
        networks=expand(rules.train.output.network, variant=VARIANTS),
        truth=DEMO_FILES["truth_network"],
        code=code("network", "graph"),
    output:
        report(
            f"{RESULTS}/network/recovery.tsv",
            caption="../workflow/report/network.rst",
            category="Network",
        ),
    params:
        options=opts("network"),
    log:
        f"{LOGS}/network.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape network --graph {input.graph} --networks {input.networks} --truth {input.truth}"
        " --out {output} {params.options} > {log} 2>&1"
