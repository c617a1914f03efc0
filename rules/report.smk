rule report:
    input:
        metrics=rules.evaluate.output.metrics,
        per_condition=rules.evaluate.output.per_condition,
        summary=rules.evaluate.output.summary,
        predictions=rules.evaluate.output.predictions,
        history=expand(rules.train.output.history, variant=VARIANTS),
        networks=learned_networks(),
        recovery=network_recovery,
        headline=seeded_headline(),
    output:
        summary=report(
            f"{RESULTS}/report/summary.md",
            caption="../workflow/report/summary.rst",
            category="Summary",
        ),
        pred_vs_obs=report(
            f"{RESULTS}/report/pred_vs_obs.png",
            caption="../workflow/report/pred_vs_obs.rst",
            category="Summary",
        ),
        metric_bars=report(
            f"{RESULTS}/report/metric_bars.png",
            caption="../workflow/report/metric_bars.rst",
            category="Summary",
        ),
        training=report(
            f"{RESULTS}/report/training_curves.png",
            caption="../workflow/report/training_curves.rst",
            category="Training",
        ),
        **network_plot_output(),
    params:
        options=opts("report"),
        optional=report_optional_args,
        out_dir=out_dir,
        code=code_hash("report"),
        grape=GRAPE,
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} report --metrics {input.metrics} --per-condition {input.per_condition}"
        " --summary {input.summary} --predictions {input.predictions} --history {input.history}"
        " {params.optional} --out-dir {params.out_dir} {params.options} > {log} 2>&1"
