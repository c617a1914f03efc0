rule dataset_download:
    output:
        archive=f"{dataset_dir()}/archive",
        sha256=f"{dataset_dir()}/archive.sha256",
        md5=f"{dataset_dir()}/archive.md5",
    params:
        source=dataset_download_args,
        options=opts("dataset download"),
        code=code_hash("dataset"),
        grape=GRAPE,
    log:
        f"logs/datasets/{dataset_name()}/download.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} dataset download {params.source} --out {output.archive} {params.options} > {log} 2>&1"


rule dataset_extract:
    input:
        archive=rules.dataset_download.output.archive,
    output:
        h5ad=f"{dataset_dir()}/dataset.h5ad",
        provenance=f"{dataset_dir()}/dataset.json",
    params:
        name=dataset_name(),
        member=config["dataset"]["member"],
        code=code_hash("dataset"),
        grape=GRAPE,
    log:
        f"logs/datasets/{dataset_name()}/extract.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} dataset extract --name {params.name:q} --archive {input.archive} --member {params.member:q}"
        " --out {output.h5ad} --provenance {output.provenance} > {log} 2>&1"


rule dataset_subset:
    input:
        dataset=dataset_source(),
    output:
        h5ad=f"{RESULTS}/dataset/dataset.h5ad",
        provenance=f"{RESULTS}/dataset/provenance.json",
    params:
        subset=dataset_subset_json(),
        options=opts("dataset subset"),
        code=code_hash("dataset"),
        grape=GRAPE,
    log:
        f"{LOGS}/dataset_subset.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} dataset subset --dataset {input.dataset} --subset {params.subset:q}"
        " --out {output.h5ad} --provenance {output.provenance} {params.options} > {log} 2>&1"
