rule train:
    input:
        dataset=dataset_path(),
        graph=rules.graph.output[0],
        code=code("train", "model", "split", "data", "graph", "embed"),
    output:
        split=f"{RESULTS}/train/split.tsv",
        model=f"{RESULTS}/train/model.safetensors",
        model_config=f"{RESULTS}/train/model.yaml",
        history=report(
            f"{RESULTS}/train/history.tsv",
            caption="../workflow/report/history.rst",
            category="Training",
        ),
        predictions=f"{RESULTS}/train/predictions.h5ad",
    params:
        options=opts("dataset", "train"),
        out_dir=out_dir,
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape train --dataset {input.dataset} --graph {input.graph} --out-dir {params.out_dir}"
        " --threads {threads} {params.options} > {log} 2>&1"
