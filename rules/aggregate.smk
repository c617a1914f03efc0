rule aggregate:
    input:
        per_condition=expand(rules.evaluate_seeds.output.per_condition, seed=SEEDS),
    output:
        summary=f"{RESULTS}/aggregate/summary.tsv",
        comparison=f"{RESULTS}/aggregate/comparison.tsv",
        headline=f"{RESULTS}/aggregate/headline.tsv",
        ablations=f"{RESULTS}/aggregate/ablations.tsv",
        headline_md=report(
            f"{RESULTS}/aggregate/headline.md",
            caption="../workflow/report/headline.rst",
            category="Summary",
        ),
    params:
        options=opts("aggregate"),
        out_dir=out_dir,
        code=code_hash("aggregate"),
        grape=GRAPE,
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} aggregate --per-condition {input.per_condition} --out-dir {params.out_dir}"
        " {params.options} > {log} 2>&1"
