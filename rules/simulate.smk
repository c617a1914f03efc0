# The offline demo, simulated once per distinct `simulate` section into
# resources/demo/<DEMO_KEY>/ (DEMO_KEY: a hash of the settings, see rules/common.smk).
rule simulate:
    input:
    output:
        **DEMO_FILES,
    params:
        options=opts("simulate"),
        out_dir=out_dir,
        code=code_hash("simulate"),
        grape=GRAPE,
    log:
        f"logs/demo/{DEMO_KEY}/simulate.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} simulate --out-dir {params.out_dir} {params.options} > {log} 2>&1"
