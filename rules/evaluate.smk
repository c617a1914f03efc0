rule evaluate:
    input:
        dataset=dataset_path(),
        predictions=expand(rules.train.output.predictions, variant=VARIANTS),
        split=rules.split.output[0],
        mapping=rules.annotate.output.mapping,
    output:
        metrics=report(
            f"{RESULTS}/evaluate/metrics.tsv",
            caption="../workflow/report/metrics.rst",
            category="Evaluation",
        ),
        per_condition=report(
            f"{RESULTS}/evaluate/per_condition.tsv",
            caption="../workflow/report/per_condition.rst",
            category="Evaluation",
        ),
        summary=report(
            f"{RESULTS}/evaluate/metrics.json",
            caption="../workflow/report/metrics_json.rst",
            category="Evaluation",
        ),
        predictions=f"{RESULTS}/evaluate/test_predictions.h5ad",
        **cell_eval_outputs(),
    params:
        options=opts("evaluate"),
        run_config=run_config_json,
        out_dir=out_dir,
        code=code_hash("evaluate"),
        grape=GRAPE,
    log:
        f"{LOGS}/evaluate.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "printf '%s' {params.run_config:q} | {params.grape} evaluate --dataset {input.dataset}"
        " --predictions {input.predictions} --split {input.split} --mapping {input.mapping} --run-config -"
        " --out-dir {params.out_dir} {params.options} > {log} 2>&1"
