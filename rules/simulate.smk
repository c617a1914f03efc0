rule simulate:
    input:
        code=code("simulate", "de", "data"),
    output:
        **DEMO_FILES,
    params:
        options=opts("simulate"),
        out_dir=out_dir,
    log:
        "logs/demo/simulate.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape simulate --out-dir {params.out_dir} {params.options} > {log} 2>&1"
