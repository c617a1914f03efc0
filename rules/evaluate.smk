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


# The evaluation of each split of split.seeds: results/<run>/splits/seed<k>/evaluate/ (the aggregate's input).
use rule evaluate as evaluate_seeds with:
    input:
        dataset=dataset_path(),
        predictions=expand(rules.train_seeds.output.predictions, variant=VARIANTS, allow_missing=True),
        split=rules.split_seeds.output[0],
        mapping=rules.annotate.output.mapping,
    output:
        metrics=f"{SEED_RESULTS}/evaluate/metrics.tsv",
        per_condition=f"{SEED_RESULTS}/evaluate/per_condition.tsv",
        summary=f"{SEED_RESULTS}/evaluate/metrics.json",
        predictions=f"{SEED_RESULTS}/evaluate/test_predictions.h5ad",
        **cell_eval_outputs(SEED_RESULTS),
    log:
        f"{SEED_LOGS}/evaluate.log",
    wildcard_constraints:
        seed=r"\d+",
