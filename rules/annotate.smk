rule annotate:
    input:
        gtf=annotation_file("gtf"),
        cdna=annotation_file("cdna"),
        ncrna=annotation_file("ncrna"),
        dataset=dataset_path(),
        code=code("annotate", "data"),
    output:
        genes=f"{RESULTS}/annotate/genes.tsv",
        fasta=f"{RESULTS}/annotate/sequences.fa",
        missing=f"{RESULTS}/annotate/missing_genes.tsv",
    params:
        options=opts("dataset", "annotate"),
        cache="resources/pyensembl",
    log:
        f"{LOGS}/annotate.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "python -m grape annotate --gtf {input.gtf} --cdna {input.cdna} --ncrna {input.ncrna}"
        " --dataset {input.dataset} --cache-dir {params.cache} --genes-out {output.genes}"
        " --fasta-out {output.fasta} --missing-out {output.missing} {params.options} > {log} 2>&1"
