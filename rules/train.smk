rule train:
    input:
        dataset=dataset_path(),
        graph=graph_file,
        split=rules.split.output[0],
        mapping=rules.annotate.output.mapping,
    output:
        model=f"{RESULTS}/train/{{variant}}/model.safetensors",
        model_config=f"{RESULTS}/train/{{variant}}/model.yaml",
        history=report(
            f"{RESULTS}/train/{{variant}}/history.tsv",
            caption="../workflow/report/history.rst",
            category="Training",
            subcategory="{variant}",
        ),
        predictions=f"{RESULTS}/train/{{variant}}/predictions.h5ad",
        network=report(
            f"{RESULTS}/train/{{variant}}/network.tsv",
            caption="../workflow/report/network_export.rst",
            category="Training",
            subcategory="{variant}",
        ),
    params:
        options=train_options,
        out_dir=out_dir,
        code=code_hash("train"),
        grape=GRAPE,
    log:
        f"{LOGS}/train_{{variant}}.log",
    benchmark:
        f"{BENCH}/train_{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} train --dataset {input.dataset} --graph {input.graph} --split {input.split}"
        " --mapping {input.mapping} --out-dir {params.out_dir} --threads {threads} {params.options} > {log} 2>&1"


# Every model variant on each split of split.seeds: results/<run>/splits/seed<k>/train/<variant>/.
use rule train as train_seeds with:
    input:
        dataset=dataset_path(),
        graph=graph_file,
        split=rules.split_seeds.output[0],
        mapping=rules.annotate.output.mapping,
    output:
        model=f"{SEED_RESULTS}/train/{{variant}}/model.safetensors",
        model_config=f"{SEED_RESULTS}/train/{{variant}}/model.yaml",
        history=f"{SEED_RESULTS}/train/{{variant}}/history.tsv",
        predictions=f"{SEED_RESULTS}/train/{{variant}}/predictions.h5ad",
        network=f"{SEED_RESULTS}/train/{{variant}}/network.tsv",
    log:
        f"{SEED_LOGS}/train_{{variant}}.log",
    benchmark:
        f"{SEED_BENCH}/train_{{variant}}.tsv"
    wildcard_constraints:
        variant="|".join(VARIANTS),
        seed=r"\d+",
