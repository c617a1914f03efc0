rule report:
    input:
        metrics=rules.evaluate.output.metrics,
        history=expand(rules.train.output.history, variant="full"),
        code=code("report", "metrics"),
    output:
        report(
            f"{RESULTS}/report/summary.md",
            caption="../workflow/report/summary.rst",
            category="Summary",
        ),
    params:
        options=opts("report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape report --metrics {input.metrics} --history {input.history} --out {output}"
        " {params.options} > {log} 2>&1"
